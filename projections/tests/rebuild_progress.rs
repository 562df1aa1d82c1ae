//! `rebuild_progress`: what `storekeeper projections rebuild --wait` shows
//! while workers rebuild a read model, read from the checkpoints and the log.

use eventlog::{ExpectedVersion, Metadata, NewEvent, StreamWrite};
use projections::{RebuildProgress, rebuild_progress, request_rebuild};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn a_rebuild_is_followed_from_its_request_to_its_take_over() {
    let (pool, log, _) = test_support::command_side().await;
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "ThingHappened".into(),
        schema_version: 1,
        occurred_at: chrono::Utc::now(),
        metadata: Metadata::system("test"),
        data: json!({}),
    };
    let appended = log
        .append(vec![StreamWrite { stream_id: format!("thing-{}", Uuid::now_v7()), expected: ExpectedVersion::Any, events: vec![event] }])
        .await
        .unwrap();
    let head = appended.position;
    sqlx::query("INSERT INTO projection_checkpoints (projection, version, position) VALUES ('things', 1, $1)")
        .bind(head as i64)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(rebuild_progress(&pool, "things").await.unwrap(), RebuildProgress { requested: false, position: None, head });

    assert!(request_rebuild(&pool, "things").await.unwrap());
    assert_eq!(rebuild_progress(&pool, "things").await.unwrap(), RebuildProgress { requested: true, position: None, head });

    // A worker starts it beside the live view...
    sqlx::query("INSERT INTO projection_checkpoints (projection, version, position) VALUES ('things:rebuild', 1, 0)")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(rebuild_progress(&pool, "things").await.unwrap(), RebuildProgress { requested: true, position: Some(0), head });
    // ...and hands over once it has caught up.
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = 'things:rebuild'").execute(&pool).await.unwrap();
    sqlx::query("UPDATE projection_checkpoints SET rebuild_requested = false, position = $1 WHERE projection = 'things'")
        .bind(head as i64)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(rebuild_progress(&pool, "things").await.unwrap(), RebuildProgress { requested: false, position: None, head });
}
