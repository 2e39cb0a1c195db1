//! Named scenarios of speculation (`--speculate`) on one job's scheduler,
//! with simulated time: the rule (75 % of the phase committed, 1.5 × the
//! median, at least 1 s), the timer that brings a backup (never a poll),
//! the backup on the other worker, the first finisher committing and the
//! other being interrupted and discarded (I2, I3), and nothing of it
//! without the flag. `tests/cluster_simulation.rs` covers random schedules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wmr_core::model::{
    AttemptEpoch, AttemptReport, AttemptStats, InputSplit, JobId, Limits, ModuleHash, TaskId,
    TenantId, WorkerId,
};
use wmr_core::scheduler::{
    Action, AttemptOutcome, Event, JobPlan, Phase, Scheduler, SchedulerConfig, Speculation,
};

const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);

fn ms(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

/// 4 map tasks, 1 reducer, workers w1 and w2 with one slot each.
fn job(speculate: bool, base: Instant) -> Scheduler {
    let plan = JobPlan {
        tenant: TenantId::local(),
        job: JobId::new(),
        map_module: ModuleHash("m".into()),
        reduce_module: ModuleHash("r".into()),
        splits: (0..4)
            .map(|i| InputSplit {
                path: PathBuf::from(format!("in/{i}.txt")),
                offset: 0,
                len: 4096,
            })
            .collect(),
        reducers: 1,
        limits: Limits::default(),
        params: BTreeMap::new(),
        output: PathBuf::from("out"),
        output_format: Default::default(),
        shuffle_settings: Default::default(),
        work_root: PathBuf::from("work"),
        shuffle: wmr_core::model::Shuffle::SharedStore,
    };
    let config = SchedulerConfig {
        speculation: speculate.then(Speculation::default),
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(plan, config, base);
    s.handle(
        base,
        Event::WorkerJoined {
            worker: W1,
            slots: 1,
        },
    );
    s.handle(
        base,
        Event::WorkerJoined {
            worker: W2,
            slots: 1,
        },
    );
    s
}

fn actions(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn assigned(actions: &[Action]) -> Vec<(TaskId, AttemptEpoch, WorkerId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Assign { worker, assignment } => {
                Some((assignment.task, assignment.epoch, *worker))
            }
            _ => None,
        })
        .collect()
}

fn report(s: &mut Scheduler, at: Instant, task: TaskId, epoch: u32, worker: WorkerId) {
    let report = AttemptReport {
        job: s.job(),
        task,
        epoch: AttemptEpoch(epoch),
        worker,
        outcome: Ok(AttemptStats::default()),
        log: String::new(),
    };
    s.handle(at, Event::AttemptFinished(report));
}

fn commit_done(s: &mut Scheduler, at: Instant, task: TaskId, epoch: u32) {
    let event = Event::CommitFinished {
        task,
        epoch: AttemptEpoch(epoch),
        result: Ok(()),
    };
    s.handle(at, event);
}

/// m0 starts on w1 and straggles; w2 runs m1, m2, m3 in 100 ms each, so at
/// 300 ms 3 of 4 maps (75 %) are committed with a median of 100 ms.
fn straggle(speculate: bool) -> (Scheduler, Instant) {
    let base = Instant::now();
    let mut s = job(speculate, base);
    let first = assigned(&actions(&mut s));
    assert_eq!(
        first,
        [
            (TaskId::Map(0), AttemptEpoch(1), W1),
            (TaskId::Map(1), AttemptEpoch(1), W2)
        ]
    );
    for (i, t) in [(1, 100), (2, 200), (3, 300)] {
        report(&mut s, ms(base, t), TaskId::Map(i), 1, W2);
        commit_done(&mut s, ms(base, t), TaskId::Map(i), 1);
        let next = assigned(&actions(&mut s));
        if i < 3 {
            assert_eq!(next, [(TaskId::Map(i + 1), AttemptEpoch(1), W2)]);
        } else {
            assert!(next.is_empty(), "no backup before it is due: {next:?}");
        }
    }
    (s, base)
}

/// The rule: 1.5 × 100 ms is below the 1 s minimum, so m0 is due a backup
/// 1 s after it started; the scheduler's timer says so (no polling), and at
/// that time the backup goes to w2, the other worker, with a new epoch.
#[test]
fn a_straggler_gets_one_backup_on_the_other_worker_when_its_timer_fires() {
    let (mut s, base) = straggle(true);
    assert_eq!(
        s.poll_timeout(),
        Some(ms(base, 1_000)),
        "the backup's timer"
    );
    s.handle_timeout(ms(base, 999));
    assert!(assigned(&actions(&mut s)).is_empty(), "not due before 1 s");
    s.handle_timeout(ms(base, 1_000));
    let backup = assigned(&actions(&mut s));
    assert_eq!(backup, [(TaskId::Map(0), AttemptEpoch(2), W2)]);
    let log = s.attempt_log();
    assert!(
        log.iter()
            .any(|r| r.epoch == AttemptEpoch(2) && r.speculative)
    );
    assert_eq!(s.running_on(W2), 1, "the backup takes a slot (I5)");
    // One backup per task: later timers bring no other.
    s.handle_timeout(ms(base, 5_000));
    assert!(assigned(&actions(&mut s)).is_empty());
    assert_eq!(s.audit(), Ok(()));
}

/// The backup finishes first: it commits (I2), the straggler is
/// interrupted and `Superseded`; its late success report is discarded (I3)
/// and the record stays `Superseded`.
#[test]
fn the_backup_finishing_first_commits_and_the_straggler_is_interrupted_and_discarded() {
    let (mut s, base) = straggle(true);
    s.handle_timeout(ms(base, 1_000));
    actions(&mut s);
    report(&mut s, ms(base, 1_100), TaskId::Map(0), 2, W2);
    let done = actions(&mut s);
    assert_eq!(
        done,
        [
            Action::Interrupt {
                task: TaskId::Map(0),
                epoch: AttemptEpoch(1),
                worker: W1
            },
            Action::Commit {
                task: TaskId::Map(0),
                epoch: AttemptEpoch(2),
                worker: W2
            },
        ]
    );
    commit_done(&mut s, ms(base, 1_100), TaskId::Map(0), 2);
    assert_eq!(s.phase(), Phase::Reducing);
    actions(&mut s);
    report(&mut s, ms(base, 1_500), TaskId::Map(0), 1, W1);
    assert_eq!(
        actions(&mut s),
        [Action::Discard {
            task: TaskId::Map(0),
            epoch: AttemptEpoch(1),
            worker: W1
        }]
    );
    let straggler = &s.attempt_log()[0];
    assert_eq!(
        (straggler.task, straggler.epoch),
        (TaskId::Map(0), AttemptEpoch(1))
    );
    assert_eq!(straggler.outcome, AttemptOutcome::Superseded);
    assert_eq!(straggler.ended_ms, Some(1_500));
    let commits = s
        .attempt_log()
        .iter()
        .filter(|r| r.task == TaskId::Map(0) && r.outcome == AttemptOutcome::Committed)
        .count();
    assert_eq!(commits, 1, "I2: one commit per task");
}

/// The straggler finishes first after all: it commits with its older epoch
/// and the backup is interrupted, `Superseded`, its slot free again.
#[test]
fn the_straggler_finishing_first_commits_and_the_backup_is_interrupted() {
    let (mut s, base) = straggle(true);
    s.handle_timeout(ms(base, 1_000));
    actions(&mut s);
    report(&mut s, ms(base, 1_050), TaskId::Map(0), 1, W1);
    let done = actions(&mut s);
    assert_eq!(
        done[..2],
        [
            Action::Interrupt {
                task: TaskId::Map(0),
                epoch: AttemptEpoch(2),
                worker: W2
            },
            Action::Commit {
                task: TaskId::Map(0),
                epoch: AttemptEpoch(1),
                worker: W1
            },
        ]
    );
    let backup = s
        .attempt_log()
        .iter()
        .find(|r| r.epoch == AttemptEpoch(2))
        .expect("the backup is logged");
    assert_eq!(backup.outcome, AttemptOutcome::Superseded);
    assert_eq!(s.running_on(W2), 0);
    assert_eq!(s.audit(), Ok(()));
}

/// Without `--speculate` the straggler only has its lease: the timer is the
/// lease's (10 s), and no backup is ever assigned.
#[test]
fn without_speculate_the_straggler_gets_no_backup() {
    let (mut s, base) = straggle(false);
    assert_eq!(s.poll_timeout(), Some(ms(base, 10_000)), "only the lease");
    s.handle_timeout(ms(base, 5_000));
    assert!(assigned(&actions(&mut s)).is_empty());
    assert!(s.attempt_log().iter().all(|r| !r.speculative));
}
