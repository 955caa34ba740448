//! Big files, outside the rounds: a round hands its big-file jobs off
//! (grouped by content), and the receiver runs each group as a task of its
//! own ([`run`]), a few at a time, so a transfer that crawls or stalls
//! holds back no small file, directory or deletion of the folder.
//!
//! ```text
//!  Round ─► RoundReport::big_files ─► Receiver: paths in flight (rounds
//!    skip them) ─► task (health.spawn): wait for a slot ─► apply each job
//!    of the group ─► commit each outcome (same rules as a round) ─► audit
//!    ─► report back: retries, races, another round
//! ```
//!
//! A group runs its jobs one after the other, so the first fetch serves
//! the rest (they share the content).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{
    outcomes::{Outcomes, Planned, RoundReport},
    round::order_providers,
};
use crate::{
    apply::{self, Sources},
    folder::Folder,
    health::Health,
};

/// Big-file groups transferring at once (each holds one transfer).
pub const BIG_CONCURRENCY: usize = 4;

/// Wait for a slot, then apply the group from the peers connected then;
/// each outcome is committed as it lands.
pub async fn run(
    folder: Arc<Folder>,
    group: Vec<Planned>,
    health: Arc<Health>,
    slots: Arc<Semaphore>,
) -> RoundReport {
    // The semaphore is never closed; a failed acquire just runs unthrottled.
    let _slot = slots.acquire_owned().await.ok();
    let sources = Sources::new(folder.content.providers(), health);
    apply_group(folder, group, &sources).await
}

/// Apply one group of big-file jobs with `sources`: exactly one outcome
/// each, committed one by one.
pub async fn apply_group(
    folder: Arc<Folder>,
    group: Vec<Planned>,
    sources: &Sources,
) -> RoundReport {
    let _work = sources.health.begin();
    let mut out = Outcomes::new(folder.clone(), sources.health.clone());
    out.planned(&group);
    let sources = sources.ordered(order_providers(&sources.providers, &group));
    for p in group {
        let outcome = apply::apply_one(&folder, p.job.clone(), &sources).await;
        out.record(&p.job, p.rows, outcome);
        out.commit(true).await;
    }
    out.audit();
    out.report
}
