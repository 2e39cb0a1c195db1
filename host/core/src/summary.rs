//! What a finished job did: its totals, dead letters and attempt log,
//! computed from its scheduler. `wmr run --json` prints it; the
//! coordinator keeps it and sends it to clients.

use crate::model::{DeadLetter, TaskId};
use crate::scheduler::{AttemptOutcome, AttemptRecord, JobOutcome, Phase, Scheduler};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One phase change of a job, with its time and reason: the coordinator
/// persists them and `wmr status` shows them.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PhaseChange {
    pub phase: Phase,
    pub unix_ms: u64,
    pub reason: String,
}

/// Progress as the driver reports it after every event.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub phase: Phase,
    pub committed: usize,
    pub running: usize,
    pub total: usize,
}

/// What a finished job did; `wmr run --json` prints it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct JobSummary {
    pub job: String,
    pub outcome: JobOutcome,
    pub tasks: usize,
    pub attempts: usize,
    pub failed_attempts: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_out: u64,
    pub fuel_used: u64,
    pub wall_ms: u64,
    pub counters: BTreeMap<String, i64>,
    /// Records skipped because the guest trapped on them (skip mode).
    pub dead_letters: Vec<DeadLetter>,
    pub attempt_log: Vec<AttemptRecord>,
    /// Backup attempts started by speculation (`--speculate`).
    pub speculative: usize,
    /// Of those, the ones that finished first and committed.
    pub speculative_won: usize,
}

/// The dead letters of a job: those of its committed map attempts.
pub fn dead_letters(scheduler: &Scheduler) -> Vec<DeadLetter> {
    let mut dead: Vec<DeadLetter> = scheduler
        .attempt_log()
        .iter()
        .filter(|r| r.outcome == AttemptOutcome::Committed)
        .filter_map(|r| r.stats.as_ref())
        .flat_map(|s| s.dead_letters.iter().cloned())
        .collect();
    dead.sort_by(|a, b| (&a.file, a.offset).cmp(&(&b.file, b.offset)));
    dead
}

pub fn summarize(scheduler: &Scheduler, outcome: JobOutcome, wall: Duration) -> JobSummary {
    let log = scheduler.attempt_log().to_vec();
    let mut summary = JobSummary {
        job: scheduler.job().to_string(),
        outcome,
        tasks: scheduler.task_count(),
        attempts: log.len(),
        failed_attempts: log
            .iter()
            .filter(|r| matches!(r.outcome, AttemptOutcome::Failed(_)))
            .count(),
        bytes_in: 0,
        bytes_out: 0,
        records_out: 0,
        fuel_used: 0,
        wall_ms: wall.as_millis() as u64,
        counters: BTreeMap::new(),
        dead_letters: dead_letters(scheduler),
        attempt_log: Vec::new(),
        speculative: log.iter().filter(|r| r.speculative).count(),
        speculative_won: log
            .iter()
            .filter(|r| r.speculative)
            .filter(|r| {
                matches!(
                    r.outcome,
                    AttemptOutcome::Committed | AttemptOutcome::OutputLost
                )
            })
            .count(),
    };
    for record in &log {
        let Some(stats) = &record.stats else { continue };
        summary.fuel_used += stats.fuel_used;
        if record.outcome != AttemptOutcome::Committed {
            continue;
        }
        match record.task {
            TaskId::Map(_) => summary.bytes_in += stats.bytes_in,
            TaskId::Reduce(_) => {
                summary.bytes_out += stats.bytes_out;
                summary.records_out += stats.records_out;
            }
        }
        for (name, value) in &stats.counters {
            // Saturating: a guest's extreme deltas must not overflow here.
            let total = summary.counters.entry(name.clone()).or_default();
            *total = total.saturating_add(*value);
        }
    }
    summary.attempt_log = log;
    summary
}

/// A duration as people read it: `850 ms`, `2.1 s`, `3 min 4 s`,
/// `1 h 2 min` (`wmr status`, `wmr jobs`, client errors).
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", d.as_secs_f64()),
        60_000..3_600_000 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_in_human_units() {
        let ms = Duration::from_millis;
        assert_eq!(human_duration(ms(0)), "0 ms");
        assert_eq!(human_duration(ms(850)), "850 ms");
        assert_eq!(human_duration(ms(2_140)), "2.1 s");
        assert_eq!(human_duration(ms(184_000)), "3 min 4 s");
        assert_eq!(human_duration(ms(3_720_000)), "1 h 2 min");
    }
}
