//! Read-your-writes: a request carrying consistency tokens waits until the
//! projections (or this node's index) that serve it have applied them.
//!
//! A token is the position of the write's last event. Fed in process, a
//! consumer has applied it once its position reaches it; fed from Kafka,
//! once the partitions of the streams that write touched have
//! (`Progress::covers`). A request looks at the checkpoints itself once;
//! while it waits, it reads them from the `Board`, which reads them once
//! per `NOTIFY` of the runners for every request waiting (and every
//! 250 ms while any waits, should notifications stop), so a waiting
//! request costs the database nothing more.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use eventlog::{EventLog, Progress};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{ApiError, AppState};

/// Requests of one node waiting on tokens at once. A wait holds a request
/// (and its connection) open for up to `edge::consistency::MAX_WAIT`; past
/// this many, a read that would wait is answered 503 `overloaded` at once,
/// and reads that need not wait keep the server's other requests in
/// flight (`edge::serve::Limits`) for themselves.
pub const MAX_WAITERS: usize = 64;

/// A counter that moves on every progress notification. Should the
/// listening connection fail, it reconnects; the `Board` is read every
/// `BOARD_FALLBACK` meanwhile.
pub(crate) fn listen_for_progress(pool: PgPool) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            let listened = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(eventlog::progress::PROGRESS_CHANNEL).await?;
                loop {
                    listener.recv().await?;
                    tx.send_modify(|n| *n += 1);
                }
            };
            let result: Result<(), sqlx::Error> = tokio::select! {
                result = listened => result,
                _ = tx.closed() => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "listening for projection progress failed; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    rx
}

/// Every read model's progress as last read, for the requests waiting on
/// tokens: read again on each progress notification while any waits.
pub struct Board {
    current: watch::Receiver<Arc<HashMap<String, Progress>>>,
    waiting: Arc<AtomicUsize>,
}

/// The read models whose progress the board keeps.
const BOARD: [&str; 5] = {
    use projections::names::*;
    [PRODUCTS, CUSTOMERS, ORDERS, SALES, AUDIT]
};

/// How often the board is read again while requests wait, whatever the
/// notifications (a listening connection that failed is being replaced).
const BOARD_FALLBACK: Duration = Duration::from_millis(250);

impl Board {
    /// Starts keeping the board, woken by `notified`.
    pub(crate) fn keep(pool: PgPool, mut notified: watch::Receiver<u64>) -> Arc<Board> {
        let (tx, current) = watch::channel(Arc::new(HashMap::new()));
        let waiting = Arc::new(AtomicUsize::new(0));
        let board = Arc::new(Board { current, waiting: waiting.clone() });
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = notified.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(BOARD_FALLBACK) => {}
                    _ = tx.closed() => return,
                }
                if waiting.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                match projections::progress(&pool, &BOARD).await {
                    Ok(read) => {
                        let read = BOARD.iter().zip(read).filter_map(|(name, p)| Some(((*name).to_owned(), p?))).collect();
                        tx.send_replace(Arc::new(read));
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the read models' progress for waiting requests failed"),
                }
            }
        });
        board
    }

    /// Counted as waiting (the board is read on each notification) until
    /// the answer is dropped; from before the request's own first look, so
    /// that no notification after that look is missed.
    fn wait(&self) -> Waiting {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self.waiting.clone())
    }

    fn progress(&self, names: &[&str]) -> Vec<Option<Progress>> {
        let current = self.current.borrow().clone();
        names.iter().map(|name| current.get(*name).cloned()).collect()
    }
}

struct Waiting(Arc<AtomicUsize>);

/// A request waiting on tokens, counted by `storekeeper_consistency_waiting`.
struct Waiter<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl<'a> Waiter<'a> {
    fn counted(permit: tokio::sync::SemaphorePermit<'a>) -> Self {
        metrics::gauge!("storekeeper_consistency_waiting").increment(1.0);
        Waiter { _permit: permit }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        metrics::gauge!("storekeeper_consistency_waiting").decrement(1.0);
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Tokens, and the streams each one wrote (looked up once, when a
/// partitioned consumer needs them).
struct Tokens {
    positions: Vec<u64>,
    streams: Option<Vec<Vec<String>>>,
}

impl Tokens {
    async fn covered_by(&mut self, pool: &PgPool, progress: &Progress) -> Result<bool, ApiError> {
        if !progress.is_partitioned() {
            return Ok(self.positions.iter().all(|t| progress.position >= *t));
        }
        if self.streams.is_none() {
            let mut streams = Vec::with_capacity(self.positions.len());
            for position in &self.positions {
                streams.push(eventlog::progress::streams_of_append(pool, *position).await?);
            }
            self.streams = Some(streams);
        }
        let streams = self.streams.as_ref().expect("just filled");
        Ok(self.positions.iter().zip(streams).all(|(token, streams)| progress.covers(*token, streams)))
    }
}

/// Waits until `covered` holds for the request's tokens, waking whenever
/// `wake` moves; answers the tokens, if any.
/// A token that is not covered at once is checked against the head of
/// `log` first: one that no write has produced is refused, not waited for.
async fn wait_until<W, F>(
    pool: &PgPool,
    log: &dyn EventLog,
    waiters: &tokio::sync::Semaphore,
    headers: &HeaderMap,
    mut wake: watch::Receiver<W>,
    mut progress: impl FnMut() -> F,
) -> Result<Option<edge::consistency::Wanted>, ApiError>
where
    F: std::future::Future<Output = Result<Vec<Option<Progress>>, ApiError>>,
{
    let Some(wanted) = edge::consistency::decode(headers)? else { return Ok(None) };
    let mut tokens = Tokens { positions: wanted.positions.clone(), streams: None };
    let started = tokio::time::Instant::now();
    let deadline = started + wanted.timeout;
    let mut head_checked = false;
    // Held while this request waits.
    let mut _waiting = None;
    loop {
        wake.borrow_and_update();
        let mut all = true;
        for progress in progress().await? {
            match progress {
                Some(progress) if tokens.covered_by(pool, &progress).await? => {}
                _ => all = false,
            }
        }
        if all {
            metrics::histogram!("storekeeper_consistency_wait_seconds").record(started.elapsed().as_secs_f64());
            return Ok(Some(wanted));
        }
        if !head_checked {
            head_checked = true;
            let newest = wanted.positions.last().copied().unwrap_or(0);
            if log.head().await?.is_some_and(|head| newest > head) {
                return Err(ApiError::InvalidConsistencyToken(newest));
            }
            match waiters.try_acquire() {
                Ok(permit) => _waiting = Some(Waiter::counted(permit)),
                Err(_) => {
                    metrics::counter!("storekeeper_http_shed_total", "reason" => "waiters").increment(1);
                    return Err(ApiError::Edge(edge::EdgeError::Overloaded));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            metrics::counter!("storekeeper_not_yet_consistent_total").increment(1);
            return Err(ApiError::NotYetConsistent(wanted.timeout.as_millis() as u64));
        }
        tokio::select! {
            changed = wake.changed() => if changed.is_err() {
                // Nothing will wake it any more: until the deadline.
                tokio::time::sleep_until(deadline).await;
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Waits until `projections` have applied every write the request's
/// consistency tokens name. A write one of whose events is parked (or held
/// back behind a parked one) in those projections is never going to show:
/// the read is refused rather than answered stale.
pub async fn wait_for_tokens(state: &AppState, headers: &HeaderMap, projections: &[&str]) -> Result<(), ApiError> {
    if headers.get(edge::consistency::TOKEN_HEADER).is_none() {
        // Nothing to wait for; a malformed timeout is refused all the same.
        edge::consistency::decode(headers)?;
        return Ok(());
    }
    let _waiting = state.board.wait();
    // The first look is the request's own; then the board's.
    let mut first = true;
    let Some(tokens) = wait_until(&state.pool, &*state.log, &state.waiters, headers, state.board.current.clone(), || {
        let own = std::mem::replace(&mut first, false);
        async move { if own { Ok(projections::progress(&state.pool, projections).await?) } else { Ok(state.board.progress(projections)) } }
    })
    .await?
    else {
        return Ok(());
    };
    refuse_if_parked(state, &tokens.positions, projections).await
}

/// A write one of whose events is parked (or held back behind a parked
/// one) in `consumers` is never going to show: the read is refused rather
/// than answered stale.
async fn refuse_if_parked(state: &AppState, tokens: &[u64], consumers: &[&str]) -> Result<(), ApiError> {
    let newest = tokens.iter().copied().max().unwrap_or(0);
    let parked: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT projection, stream_id, min(global_position) FROM dead_letters
          WHERE projection = ANY($1) AND global_position <= $2 GROUP BY projection, stream_id",
    )
    .bind(consumers)
    .bind(newest.min(i64::MAX as u64) as i64)
    .fetch_all(&state.pool)
    .await?;
    for (consumer, stream, first) in parked {
        // A message parked with no position of its own holds its stream
        // back from below every position.
        for &token in tokens.iter().filter(|t| i64::try_from(**t).is_ok_and(|t| t >= first)) {
            if eventlog::progress::streams_of_append(&state.pool, token).await?.contains(&stream) {
                return Err(ApiError::ProjectionDegraded(consumer));
            }
        }
    }
    Ok(())
}

/// Waits until this node's search index has applied the request's tokens
/// (refused, as for the read models, when one of them is parked).
pub async fn wait_for_index(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let index = state.search.clone();
    let tokens = wait_until(&state.pool, &*state.log, &state.waiters, headers, state.search.progress(), || {
        let progress = index.progress().borrow().clone();
        async move { Ok(vec![Some(progress)]) }
    })
    .await?;
    match tokens {
        Some(tokens) => refuse_if_parked(state, &tokens.positions, &[projections::search::NAME]).await,
        None => Ok(()),
    }
}
