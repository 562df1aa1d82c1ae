//! The database as the HTTP edge of either API needs to see it: whether it
//! answers (readiness) and whether a failure means it is out of reach
//! (503) rather than a fault (500). Here because both APIs stand on this
//! crate and the edge knows no database.

use sqlx::PgPool;

/// Whether the database answers a query now.
pub async fn answers(pool: PgPool) -> bool {
    sqlx::query("SELECT 1").execute(&pool).await.is_ok()
}

/// Whether a database error means "not reachable now" (503) rather than a
/// fault (500): the pool timed out or closed, or the connection broke.
pub fn unavailable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
}
