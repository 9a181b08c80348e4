-- A small school for local runs, demos and tests: two classes (3B, 4A), a teacher each, parents,
-- students and an admin; class threads, pupils' threads, 1:1 threads and a staff room; some
-- messages read, some unread. Identifiers are fixed so that tests and the demo can name people.
--
-- Users: a0000000-0000-4000-8000-0000000000NN   Threads: b0000000-0000-4000-8000-0000000000NN

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'alice.martin@school.test'),
  ('a0000000-0000-4000-8000-000000000002', 'bruno.keller@school.test'),
  ('a0000000-0000-4000-8000-000000000003', 'carla.diaz@school.test'),
  ('a0000000-0000-4000-8000-000000000004', 'david.chen@school.test'),
  ('a0000000-0000-4000-8000-000000000005', 'eva.novak@school.test'),
  ('a0000000-0000-4000-8000-000000000006', 'farid.haddad@school.test'),
  ('a0000000-0000-4000-8000-000000000007', 'grace.lee@school.test'),
  ('a0000000-0000-4000-8000-000000000008', 'hugo.diaz@school.test'),
  ('a0000000-0000-4000-8000-000000000009', 'ines.chen@school.test'),
  ('a0000000-0000-4000-8000-000000000010', 'jonas.haddad@school.test'),
  ('a0000000-0000-4000-8000-000000000011', 'karen.admin@school.test');

insert into public.profiles (id, full_name, role) values
  ('a0000000-0000-4000-8000-000000000001', 'Alice Martin', 'teacher'),  -- class 3B
  ('a0000000-0000-4000-8000-000000000002', 'Bruno Keller', 'teacher'),  -- class 4A
  ('a0000000-0000-4000-8000-000000000003', 'Carla Diaz', 'parent'),     -- 3B, Hugo's mother
  ('a0000000-0000-4000-8000-000000000004', 'David Chen', 'parent'),     -- 3B, Ines's father
  ('a0000000-0000-4000-8000-000000000005', 'Eva Novak', 'parent'),      -- 3B
  ('a0000000-0000-4000-8000-000000000006', 'Farid Haddad', 'parent'),   -- 4A, Jonas's father
  ('a0000000-0000-4000-8000-000000000007', 'Grace Lee', 'parent'),      -- 4A
  ('a0000000-0000-4000-8000-000000000008', 'Hugo Diaz', 'student'),     -- 3B
  ('a0000000-0000-4000-8000-000000000009', 'Ines Chen', 'student'),     -- 3B
  ('a0000000-0000-4000-8000-000000000010', 'Jonas Haddad', 'student'),  -- 4A
  ('a0000000-0000-4000-8000-000000000011', 'Karen Admin', 'admin');

insert into public.threads (id, title, created_at) values
  ('b0000000-0000-4000-8000-000000000001', 'Class 3B parents', now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000002', 'Class 4A parents', now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000003', 'Alice Martin / Carla Diaz', now() - interval '10 days'),
  ('b0000000-0000-4000-8000-000000000004', 'Bruno Keller / Farid Haddad', now() - interval '10 days'),
  ('b0000000-0000-4000-8000-000000000005', 'Staff room', now() - interval '60 days'),
  ('b0000000-0000-4000-8000-000000000006', 'Class 3B pupils', now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000007', 'Class 4A pupils', now() - interval '30 days');

insert into public.thread_participants (thread_id, user_id, last_read_at, joined_at) values
  ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', now() - interval '1 hour',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000003', now() - interval '3 days',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000004', now() - interval '1 hour',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000005', now() - interval '30 days', now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000002', now() - interval '1 hour',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000006', now() - interval '2 days',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000007', now() - interval '1 hour',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000003', 'a0000000-0000-4000-8000-000000000001', now() - interval '1 hour',  now() - interval '10 days'),
  ('b0000000-0000-4000-8000-000000000003', 'a0000000-0000-4000-8000-000000000003', now() - interval '5 days',  now() - interval '10 days'),
  ('b0000000-0000-4000-8000-000000000004', 'a0000000-0000-4000-8000-000000000002', now() - interval '1 hour',  now() - interval '10 days'),
  ('b0000000-0000-4000-8000-000000000004', 'a0000000-0000-4000-8000-000000000006', now() - interval '1 hour',  now() - interval '10 days'),
  ('b0000000-0000-4000-8000-000000000005', 'a0000000-0000-4000-8000-000000000001', now() - interval '1 hour',  now() - interval '60 days'),
  ('b0000000-0000-4000-8000-000000000005', 'a0000000-0000-4000-8000-000000000002', now() - interval '4 days',  now() - interval '60 days'),
  ('b0000000-0000-4000-8000-000000000005', 'a0000000-0000-4000-8000-000000000011', now() - interval '1 hour',  now() - interval '60 days'),
  ('b0000000-0000-4000-8000-000000000006', 'a0000000-0000-4000-8000-000000000001', now() - interval '1 hour',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000006', 'a0000000-0000-4000-8000-000000000008', now() - interval '1 hour',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000006', 'a0000000-0000-4000-8000-000000000009', now() - interval '6 days',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000007', 'a0000000-0000-4000-8000-000000000002', now() - interval '1 hour',  now() - interval '30 days'),
  ('b0000000-0000-4000-8000-000000000007', 'a0000000-0000-4000-8000-000000000010', now() - interval '1 hour',  now() - interval '30 days');

-- Messages between 7 days and 2 hours old: everything older than a reader's last_read_at is read.
insert into public.messages (id, thread_id, sender_id, content, created_at) values
  ('c0000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
   'Welcome to the class 3B parents'' thread!', now() - interval '7 days'),
  ('c0000000-0000-4000-8000-000000000002', 'b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000004',
   'Thank you, looking forward to the year.', now() - interval '6 days'),
  ('c0000000-0000-4000-8000-000000000003', 'b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
   'Reminder: the museum trip is on Friday, please sign the form.', now() - interval '2 days'),
  ('c0000000-0000-4000-8000-000000000004', 'b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
   'Please bring a packed lunch on Friday.', now() - interval '2 hours'),
  ('c0000000-0000-4000-8000-000000000005', 'b0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000002',
   'Class 4A: swimming lessons start next week.', now() - interval '3 days'),
  ('c0000000-0000-4000-8000-000000000006', 'b0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000007',
   'Does my daughter need a swimming cap?', now() - interval '2 days' + interval '1 hour'),
  ('c0000000-0000-4000-8000-000000000007', 'b0000000-0000-4000-8000-000000000003', 'a0000000-0000-4000-8000-000000000001',
   'Hugo did very well in his reading test.', now() - interval '4 days'),
  ('c0000000-0000-4000-8000-000000000008', 'b0000000-0000-4000-8000-000000000003', 'a0000000-0000-4000-8000-000000000003',
   'That is great to hear, thank you!', now() - interval '3 days'),
  ('c0000000-0000-4000-8000-000000000009', 'b0000000-0000-4000-8000-000000000004', 'a0000000-0000-4000-8000-000000000006',
   'Jonas will be absent on Monday (dentist).', now() - interval '5 days'),
  ('c0000000-0000-4000-8000-000000000010', 'b0000000-0000-4000-8000-000000000005', 'a0000000-0000-4000-8000-000000000011',
   'Staff meeting moved to Thursday 4pm.', now() - interval '3 days'),
  ('c0000000-0000-4000-8000-000000000011', 'b0000000-0000-4000-8000-000000000006', 'a0000000-0000-4000-8000-000000000001',
   'Homework: read chapter 3 by Wednesday.', now() - interval '5 days'),
  ('c0000000-0000-4000-8000-000000000012', 'b0000000-0000-4000-8000-000000000007', 'a0000000-0000-4000-8000-000000000002',
   'Bring your swimming things on Tuesday.', now() - interval '3 hours');
