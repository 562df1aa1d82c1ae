use futures::future::join_all;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_without_if_match_are_never_lost() {
    let app = spawn_app().await;
    let id = app.add_product("KET-1", 100, 0).await;
    let responses =
        join_all((0..40).map(|_| app.post_json(format!("/v1/products/{id}/restock"), &app.admin, json!({"quantity": 1})))).await;
    assert!(responses.iter().all(|r| r.status() == 200), "{:?}", responses.iter().map(|r| r.status()).collect::<Vec<_>>());
    assert_eq!(app.product(id).await.stock, 40);
    assert_eq!(app.stream(&format!("product-{id}")).await.len(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_registrations_with_one_email_exactly_one_wins() {
    let app = spawn_app().await;
    for round in 0..5 {
        let email = format!("race{round}@example.com");
        let responses = join_all((0..8).map(|i| {
            let email = if i % 2 == 0 { email.clone() } else { email.to_uppercase() };
            app.post_json("/v1/customers", &app.admin, json!({"email": email, "name": "Racer"}))
        }))
        .await;
        let mut created = 0;
        for response in responses {
            match response.status().as_u16() {
                201 => created += 1,
                409 => {
                    problem(response, 409, "email_taken").await;
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(created, 1, "round {round}");
    }
    let registered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'CustomerRegistered'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(registered, 5);
}
