//! `rm_audit`: every event's who, when and why, across all streams.

use async_trait::async_trait;
use domain::events::DomainEvent;
use eventlog::RecordedEvent;
use sqlx::PgConnection;

use super::{ReadModel, column};
use crate::{ApplyError, names};

pub struct AuditProjection;

#[async_trait]
impl ReadModel for AuditProjection {
    const NAME: &'static str = names::AUDIT;
    const VERSION: i32 = 1;
    const TABLES: &'static [&'static str] = &["rm_audit"];

    fn handles(_event_type: &str) -> bool {
        true
    }

    /// One statement for the whole batch.
    async fn apply_batch(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, &DomainEvent)]) -> Result<(), ApplyError> {
        sqlx::query(
            "INSERT INTO rm_audit (global_position, event_id, stream_id, stream_version, event_type, actor, role, correlation_id, causation_id, occurred_at, recorded_at)
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::uuid[], $9::uuid[], $10::timestamptz[], $11::timestamptz[])
             ON CONFLICT (global_position) DO NOTHING",
        )
        .bind(column(events, |(e, _)| e.global_position as i64))
        .bind(column(events, |(e, _)| e.event_id))
        .bind(column(events, |(e, _)| e.stream_id.as_str()))
        .bind(column(events, |(e, _)| e.stream_version as i64))
        .bind(column(events, |(e, _)| e.event_type.as_str()))
        .bind(column(events, |(e, _)| e.metadata.actor.as_str()))
        .bind(column(events, |(e, _)| e.metadata.role.as_deref()))
        .bind(column(events, |(e, _)| e.metadata.correlation_id))
        .bind(column(events, |(e, _)| e.metadata.causation_id))
        .bind(column(events, |(e, _)| e.occurred_at))
        .bind(column(events, |(e, _)| e.recorded_at))
        .execute(tx)
        .await?;
        Ok(())
    }
}
