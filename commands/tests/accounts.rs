//! The account workflows against a real database: registering with a
//! password writes both or neither, and a retry after a failure succeeds.

use commands::{Accounts, CommandService, PasswordStore, ServiceError};
use domain::customer::CustomerCommand;
use domain::{DomainError, Email};
use eventlog::Metadata;
use sqlx::PgPool;
use uuid::Uuid;

const PASSWORD: &str = "Opal-Sunrise-4711";

async fn database() -> PgPool {
    let pool = eventlog::testing::fresh_event_log_database().await;
    commands::migrate(&pool).await.expect("migrate the command core");
    pool
}

fn register(id: Uuid, email: &str) -> CustomerCommand {
    CustomerCommand::Register { customer_id: id, email: Email::parse(email).unwrap(), name: "Signer".into(), shipping_address: None }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn registered(pool: &PgPool, id: Uuid) -> (i64, i64) {
    let events = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(format!("customer-{id}"))
        .fetch_one(pool)
        .await
        .unwrap();
    let passwords =
        sqlx::query_scalar("SELECT count(*) FROM customer_passwords WHERE customer_id = $1").bind(id).fetch_one(pool).await.unwrap();
    (events, passwords)
}

fn accounts_on(pool: &PgPool) -> Accounts {
    let (log, vault) = eventlog::vault::postgres_log(pool);
    Accounts::new(CommandService::new(log, vault), PasswordStore::new(pool.clone()))
}

#[tokio::test]
async fn a_registration_with_a_password_writes_both_or_neither_and_a_retry_succeeds() {
    let pool = database().await;
    let accounts = accounts_on(&pool);
    let metadata = Metadata::system("test");

    // The append fails in its transaction, after the password moved in: neither stays.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
         CREATE TRIGGER zz_refuse AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let id = Uuid::now_v7();
    let failed = accounts.register(id, register(id, "signer@example.com"), Some(PASSWORD.into()), None, &metadata).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(registered(&pool, id).await, (0, 0), "no customer and no password");
    assert_eq!(count(&pool, "SELECT count(*) FROM staged_passwords").await, 0, "the staging is dropped");
    sqlx::query("DROP TRIGGER zz_refuse ON events").execute(&pool).await.unwrap();

    // The password cannot be written: no customer either.
    sqlx::query("ALTER TABLE staged_passwords RENAME TO staged_elsewhere").execute(&pool).await.unwrap();
    let failed = accounts.register(id, register(id, "signer@example.com"), Some(PASSWORD.into()), None, &metadata).await;
    assert!(matches!(failed, Err(ServiceError::Password(_))), "{failed:?}");
    assert_eq!(registered(&pool, id).await, (0, 0), "no customer and no password");
    sqlx::query("ALTER TABLE staged_elsewhere RENAME TO staged_passwords").execute(&pool).await.unwrap();

    // The same registration again: both.
    accounts.register(id, register(id, "signer@example.com"), Some(PASSWORD.into()), None, &metadata).await.unwrap();
    assert_eq!(registered(&pool, id).await, (1, 1));
    assert_eq!(count(&pool, "SELECT count(*) FROM staged_passwords").await, 0);
    assert_eq!(accounts.sign_in("Signer@example.com", PASSWORD.into()).await.unwrap(), Some(id));
    assert_eq!(accounts.sign_in("signer@example.com", "wrong-password".into()).await.unwrap(), None);

    // A registration refused by the domain stores no password for its id.
    let other = Uuid::now_v7();
    let taken = accounts.register(other, register(other, "SIGNER@example.com"), Some(PASSWORD.into()), None, &metadata).await;
    assert!(matches!(taken, Err(ServiceError::Domain(DomainError::EmailTaken))), "{taken:?}");
    assert_eq!(registered(&pool, other).await, (0, 0));
}

#[tokio::test]
async fn a_repeat_under_the_same_idempotency_key_answers_the_first_registration() {
    let pool = database().await;
    let accounts = accounts_on(&pool);
    let metadata = Metadata { idempotency_key: Some("register-1".into()), ..Metadata::system("test") };
    let id = Uuid::now_v7();
    let first = accounts.register(id, register(id, "again@example.com"), Some(PASSWORD.into()), None, &metadata).await.unwrap();
    let again = accounts.register(id, register(id, "again@example.com"), Some(PASSWORD.into()), None, &metadata).await.unwrap();
    assert_eq!((again.id, again.version, again.position), (first.id, first.version, first.position));
    assert_eq!(registered(&pool, id).await, (1, 1));
    assert_eq!(count(&pool, "SELECT count(*) FROM staged_passwords").await, 0);
}

#[tokio::test]
async fn passwords_are_set_for_known_customers_only_and_go_when_they_are_forgotten() {
    let pool = database().await;
    let accounts = accounts_on(&pool);
    let metadata = Metadata::system("test");
    let unknown = accounts.set_password(Uuid::now_v7(), PASSWORD.into()).await;
    assert!(matches!(unknown, Err(ServiceError::Domain(DomainError::NotFound(_)))), "{unknown:?}");

    let id = Uuid::now_v7();
    accounts.register(id, register(id, "set@example.com"), None, None, &metadata).await.unwrap();
    assert_eq!(registered(&pool, id).await, (1, 0));
    accounts.set_password(id, PASSWORD.into()).await.unwrap();
    assert_eq!(accounts.sign_in("set@example.com", PASSWORD.into()).await.unwrap(), Some(id));

    // A staging left by a registration whose outcome was unknown (a lost
    // connection) goes with the forget too.
    PasswordStore::new(pool.clone()).stage(Uuid::now_v7(), id, "$argon2id$left-behind").await.unwrap();
    accounts.forget(id, None, &metadata).await.unwrap();
    assert_eq!(registered(&pool, id).await.1, 0, "the trigger deletes it with the event");
    assert_eq!(count(&pool, "SELECT count(*) FROM staged_passwords").await, 0, "and what was staged for the customer");
    let after = accounts.set_password(id, PASSWORD.into()).await;
    assert!(matches!(after, Err(ServiceError::Domain(DomainError::InvalidState(_)))), "{after:?}");
}

/// A log kept elsewhere (here in memory) has no transaction with the
/// password table: the workflows write and delete after the append.
#[tokio::test]
async fn beside_a_log_kept_elsewhere_the_workflows_move_the_password() {
    let pool = database().await;
    let (log, vault) = eventlog::vault::in_memory_log();
    let accounts = Accounts::new(CommandService::new(log, vault), PasswordStore::beside_another_log(pool.clone()));
    let metadata = Metadata::system("test");
    let id = Uuid::now_v7();
    accounts.register(id, register(id, "elsewhere@example.com"), Some(PASSWORD.into()), None, &metadata).await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM customer_passwords").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM staged_passwords").await, 0);
    assert_eq!(accounts.sign_in("elsewhere@example.com", PASSWORD.into()).await.unwrap(), Some(id));
    let store = PasswordStore::beside_another_log(pool.clone());
    store.stage(Uuid::now_v7(), id, "$argon2id$left-behind").await.unwrap();
    accounts.forget(id, None, &metadata).await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM customer_passwords").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM staged_passwords").await, 0);
    assert_eq!(accounts.sign_in("elsewhere@example.com", PASSWORD.into()).await.unwrap(), None);
}

#[tokio::test]
async fn stagings_of_registrations_that_never_took_effect_expire_after_an_hour() {
    let pool = database().await;
    let store = PasswordStore::new(pool.clone());
    let (old, fresh) = (Uuid::now_v7(), Uuid::now_v7());
    store.stage(old, Uuid::now_v7(), "$argon2id$old").await.unwrap();
    store.stage(fresh, Uuid::now_v7(), "$argon2id$fresh").await.unwrap();
    sqlx::query("UPDATE staged_passwords SET staged_at = now() - interval '61 minutes' WHERE event_id = $1")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store.purge_expired_stagings().await.unwrap(), 1);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM staged_passwords").fetch_all(&pool).await.unwrap();
    assert_eq!(left, vec![fresh]);
}
