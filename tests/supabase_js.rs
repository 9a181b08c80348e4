//! Supabase's official JavaScript client against the stand-ins (no gateway): runs
//! `tests/node/conformance.test.mjs` under Node's test runner, so that what the other tests learn
//! from the stand-ins holds for Supabase's own client too. Fails (never skips) when Node or the npm
//! packages are missing: run `scripts/setup` first.

use supabase_standin::keys::Alg;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, FARID};
use supabase_standin::Stack;

use crate::common::node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_conforms() {
    let js = node::tests_dir();
    node::require(&js, &["node_modules/@supabase/supabase-js", "node_modules/pg"]);
    let stack = Stack::start().await.expect("stand-in stack starts");
    let keys = stack.keys();
    let output = node::command(&js)
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg("--test-force-exit")
        .arg("conformance.test.mjs")
        .env("SUPABASE_URL", stack.url())
        .env("SUPABASE_ANON_KEY", &keys.anon_key)
        .env("SUPABASE_SERVICE_ROLE_KEY", &keys.service_key)
        .env("DATABASE_URL", stack.database().url())
        .env("ALICE_ID", ALICE.id.to_string())
        .env("CARLA_ID", CARLA.id.to_string())
        .env("CARLA_TOKEN", stack.token(&CARLA, Alg::Hs256))
        .env("CARLA_TOKEN_ES256", stack.token(&CARLA, Alg::Es256))
        .env("FARID_ID", FARID.id.to_string())
        .env("FARID_TOKEN", stack.token(&FARID, Alg::Hs256))
        .env("CLASS_3B_PARENTS", CLASS_3B_PARENTS.to_string())
        .env("CLASS_4A_PARENTS", CLASS_4A_PARENTS.to_string())
        .output()
        .await
        .expect("node must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "supabase-js conformance failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ℹ pass 10") && stdout.contains("ℹ fail 0"), "expected 10 passing checks:\n{stdout}");
}
