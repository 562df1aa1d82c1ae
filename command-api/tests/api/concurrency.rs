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

/// Another process writing to the same log makes this one's cached state
/// stale: answers must still be those of the log.
#[tokio::test]
async fn cached_state_never_makes_an_answer_wrong_when_another_process_writes() {
    use domain::product::{ProductAggregate, ProductCommand};
    use domain::{Currency, Money};

    let app = spawn_app().await;
    let (log, vault) = eventlog::vault::postgres_log(&app.pool);
    let other = commands::CommandService::new(log, vault);
    let metadata = eventlog::Metadata::system("other-process");
    let id = app.add_product("KET-1", 1000, 10).await;
    let path = format!("/v1/products/{id}");

    // A conflict on stale state is retried on fresh state.
    other.execute::<ProductAggregate>(id, ProductCommand::Restock { quantity: 5 }, None, &metadata).await.unwrap();
    assert_eq!(app.post_json(format!("{path}/restock"), &app.admin, json!({"quantity": 1})).await.status(), 200);
    assert_eq!(app.product(id).await.stock, 16);

    // If-Match is checked against the log, not the cache.
    let newer = other.execute::<ProductAggregate>(id, ProductCommand::Restock { quantity: 1 }, None, &metadata).await.unwrap();
    let pinned = app
        .post(&format!("{path}/restock"), &app.admin)
        .header("if-match", format!("\"{}\"", newer.version))
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(pinned.status(), 200, "{}", pinned.text().await.unwrap());

    // A no-op on stale state is not a no-op.
    let usd = |amount| Money::new(amount, Currency::usd());
    other.execute::<ProductAggregate>(id, ProductCommand::ChangePrice { price: usd(1500) }, None, &metadata).await.unwrap();
    let back = app.post_json(format!("{path}/price"), &app.admin, json!({"price": {"amount_minor": 1000, "currency": "USD"}})).await;
    assert_eq!(back.status(), 200);
    assert_eq!(app.product(id).await.price, usd(1000));

    // A refusal the cache would not give.
    other.execute::<ProductAggregate>(id, ProductCommand::Discontinue, None, &metadata).await.unwrap();
    problem(app.post_json(format!("{path}/restock"), &app.admin, json!({"quantity": 1})).await, 409, "invalid_state").await;
}

/// An order decided while its customer was being forgotten is decided
/// again, and refused: none lands after `CustomerForgotten`, sealed with a
/// key that is gone, and none is answered with a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_order_is_written_after_its_customer_is_forgotten() {
    let app = spawn_app().await;
    let product = app.add_product("FGT-RACE", 100, 100_000).await;
    let address = json!({"line1": "1 Race Lane", "city": "Berlin", "postal_code": "10115", "country": "DE"});
    for round in 0..5 {
        let customer = app.register_customer(&format!("race-forget-{round}@example.com")).await;
        let token = app.customer_token(customer);
        let orders = (0..12).map(|_| {
            app.post_json(
                "/v1/orders",
                &token,
                json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 1}], "shipping_address": address}),
            )
        });
        let forget = async {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            app.post_json(format!("/v1/customers/{customer}/forget"), &token, json!({})).await
        };
        let (answers, forgotten) = tokio::join!(join_all(orders), forget);
        assert_eq!(forgotten.status(), 200);
        for answer in answers {
            assert!([202, 409].contains(&answer.status().as_u16()), "round {round}: {}", answer.status());
        }
        let last_forget: i64 =
            sqlx::query_scalar("SELECT global_position FROM events WHERE event_type = 'CustomerForgotten' AND stream_id = $1")
                .bind(format!("customer-{customer}"))
                .fetch_one(&app.pool)
                .await
                .unwrap();
        let late: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'OrderPlaced' AND data->>'customer_id' = $1 AND global_position > $2",
        )
        .bind(customer.to_string())
        .bind(last_forget)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(late, 0, "round {round}: an order landed after the forget");
    }
}
