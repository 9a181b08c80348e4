//! Who is who in `supabase/seed.sql`: fixed ids of the seeded school, so tests, the demo and the
//! benchmark can name people and threads. Must stay in step with the seed file (a test checks).

use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
pub struct Person {
    pub id: Uuid,
    pub email: &'static str,
    pub full_name: &'static str,
    pub role: &'static str,
}

const fn user(n: u128) -> Uuid {
    Uuid::from_u128(0xa0000000_0000_4000_8000_000000000000 | n)
}
const fn thread(n: u128) -> Uuid {
    Uuid::from_u128(0xb0000000_0000_4000_8000_000000000000 | n)
}

macro_rules! person {
    ($name:ident, $n:expr, $email:expr, $full:expr, $role:expr) => {
        pub const $name: Person = Person { id: user($n), email: $email, full_name: $full, role: $role };
    };
}

person!(ALICE, 0x01, "alice.martin@school.test", "Alice Martin", "teacher");
person!(BRUNO, 0x02, "bruno.keller@school.test", "Bruno Keller", "teacher");
person!(CARLA, 0x03, "carla.diaz@school.test", "Carla Diaz", "parent");
person!(DAVID, 0x04, "david.chen@school.test", "David Chen", "parent");
person!(EVA, 0x05, "eva.novak@school.test", "Eva Novak", "parent");
person!(FARID, 0x06, "farid.haddad@school.test", "Farid Haddad", "parent");
person!(GRACE, 0x07, "grace.lee@school.test", "Grace Lee", "parent");
person!(HUGO, 0x08, "hugo.diaz@school.test", "Hugo Diaz", "student");
person!(INES, 0x09, "ines.chen@school.test", "Ines Chen", "student");
person!(JONAS, 0x10, "jonas.haddad@school.test", "Jonas Haddad", "student");
person!(KAREN, 0x11, "karen.admin@school.test", "Karen Admin", "admin");

pub const PEOPLE: [Person; 11] = [ALICE, BRUNO, CARLA, DAVID, EVA, FARID, GRACE, HUGO, INES, JONAS, KAREN];

/// Alice (teacher) with Carla, David and Eva (parents).
pub const CLASS_3B_PARENTS: Uuid = thread(0x01);
/// Bruno (teacher) with Farid and Grace (parents).
pub const CLASS_4A_PARENTS: Uuid = thread(0x02);
/// Alice and Carla, 1:1.
pub const ALICE_CARLA: Uuid = thread(0x03);
/// Bruno and Farid, 1:1.
pub const BRUNO_FARID: Uuid = thread(0x04);
/// Alice, Bruno and Karen (admin).
pub const STAFF_ROOM: Uuid = thread(0x05);
/// Alice with Hugo and Ines (students).
pub const CLASS_3B_PUPILS: Uuid = thread(0x06);
/// Bruno with Jonas (student).
pub const CLASS_4A_PUPILS: Uuid = thread(0x07);
