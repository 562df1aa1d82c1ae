//! Operator accounts through the binary, and their sign-in through `serve`.

use serde_json::{Value, json};

use crate::deployment::Deployment;
use crate::{run, storekeeper};

#[tokio::test]
async fn an_operator_added_on_the_command_line_signs_in_for_an_admin_token_until_removed() {
    let url = eventlog::testing::fresh_database_url().await;
    let mut d = Deployment::new(url.clone(), None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;

    let added = run(storekeeper(&["operators", "add", "ops@example.com"])
        .env("DATABASE_URL", &url)
        .env("STOREKEEPER_OPERATOR_PASSWORD", "Night-Shift-2026"));
    assert!(added.status.success(), "{added:?}");
    let again = run(storekeeper(&["operators", "add", "OPS@example.com"])
        .env("DATABASE_URL", &url)
        .env("STOREKEEPER_OPERATOR_PASSWORD", "Night-Shift-2026"));
    assert!(!again.status.success(), "the same email twice");
    let listed = run(storekeeper(&["operators", "list"]).env("DATABASE_URL", &url));
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("ops@example.com") && listed.contains("1 operator(s)"), "{listed}");

    let sign_in = || {
        d.http
            .post(format!("{}/v1/auth/token", d.command))
            .json(&json!({"email": "ops@example.com", "password": "Night-Shift-2026"}))
            .send()
    };
    let answer = sign_in().await.unwrap();
    assert_eq!(answer.status(), 200);
    let token = answer.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let projections = d.http.get(format!("{}/v1/projections", d.query)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(projections.status(), 200, "an operator's token is an admin's");

    let removed = run(storekeeper(&["operators", "remove", "ops@example.com"]).env("DATABASE_URL", &url));
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(sign_in().await.unwrap().status(), 401);
}
