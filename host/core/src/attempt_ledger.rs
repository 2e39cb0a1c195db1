//! The worker's side of the report protocol, as a state machine: what a
//! `wmr worker` runs, what it has reported but not seen acknowledged, and
//! whether it is draining. It outlives connections: the `wmr worker`
//! process feeds it (connected, assigned, finished, acked, drain,
//! disconnected) and writes out what [`AttemptLedger::poll_send`] returns.
//!
//! **I3 on the worker's side.** A report is kept until the coordinator's
//! `Ack` and sent again on every new connection, so a report lost with a
//! connection is never lost for good; the coordinator accepts the current
//! epoch once and acknowledges duplicates and stale reports alike, so the
//! re-sent copies are harmless. A draining worker stops only when nothing
//! runs and every report was acknowledged.

use crate::model::{AttemptEpoch, AttemptReport, JobId, TaskId};
use crate::wire::FromWorker;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One attempt, as both sides name it.
pub type AttemptKey = (JobId, TaskId, AttemptEpoch);

#[derive(Debug, Default)]
pub struct AttemptLedger {
    running: BTreeSet<AttemptKey>,
    /// Finished attempts whose report the coordinator has not acknowledged.
    unacked: BTreeMap<AttemptKey, AttemptReport>,
    draining: bool,
    /// A session is up: messages can be queued for it.
    connected: bool,
    /// To write to the coordinator, in order, on this session.
    outbox: VecDeque<FromWorker>,
}

impl AttemptLedger {
    /// A session began: every unacknowledged report goes again, and the
    /// coordinator hears that this worker drains if it does.
    pub fn connected(&mut self) {
        self.connected = true;
        self.outbox.clear();
        for report in self.unacked.values() {
            self.outbox.push_back(FromWorker::Finished(report.clone()));
        }
        if self.draining {
            self.outbox.push_back(FromWorker::Draining);
        }
    }

    /// The session ended: what was not written is sent on the next one.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.outbox.clear();
    }

    /// An assignment arrived. `false`: this attempt is already known (run
    /// or reported) and must not run twice.
    pub fn assigned(&mut self, key: AttemptKey) -> bool {
        if self.unacked.contains_key(&key) {
            return false;
        }
        self.running.insert(key)
    }

    /// An attempt ended: keep its report until acknowledged, send it now.
    pub fn finished(&mut self, report: AttemptReport) {
        let key = (report.job, report.task, report.epoch);
        let was_running = self.running.remove(&key);
        debug_assert!(was_running, "a report for an attempt that was not running");
        if self.connected {
            self.outbox.push_back(FromWorker::Finished(report.clone()));
        }
        self.unacked.insert(key, report);
    }

    /// The coordinator processed this report (accepted or rejected).
    pub fn acked(&mut self, key: AttemptKey) {
        self.unacked.remove(&key);
    }

    /// Finish what runs, take nothing new (SIGTERM).
    pub fn drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        if self.connected {
            self.outbox.push_back(FromWorker::Draining);
        }
    }

    /// The next message to write on the current session.
    pub fn poll_send(&mut self) -> Option<FromWorker> {
        self.outbox.pop_front()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Nothing runs and every report was acknowledged.
    pub fn idle(&self) -> bool {
        self.running.is_empty() && self.unacked.is_empty()
    }

    /// Draining and idle: the worker may stop.
    pub fn drained(&self) -> bool {
        self.draining && self.idle()
    }

    pub fn running(&self) -> impl Iterator<Item = &AttemptKey> {
        self.running.iter()
    }

    pub fn unacked(&self) -> impl Iterator<Item = &AttemptKey> {
        self.unacked.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttemptFailure, WorkerId};

    fn report(key: AttemptKey) -> AttemptReport {
        AttemptReport {
            job: key.0,
            task: key.1,
            epoch: key.2,
            worker: WorkerId(1),
            outcome: Err(AttemptFailure::Trap("boom".into())),
            log: String::new(),
        }
    }

    fn sent(ledger: &mut AttemptLedger) -> Vec<String> {
        std::iter::from_fn(|| ledger.poll_send())
            .map(|m| match m {
                FromWorker::Finished(r) => format!("finished {} {}", r.task, r.epoch),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// I3, worker side: a report lost with its connection is sent again on
    /// every new session until it is acknowledged, then never again.
    #[test]
    fn a_report_is_resent_on_every_session_until_acked() {
        let key = (JobId::new(), TaskId::Map(3), AttemptEpoch(7));
        let mut ledger = AttemptLedger::default();
        ledger.connected();
        assert!(ledger.assigned(key));
        ledger.disconnected();
        // Finished while no session is up: nothing to write, kept.
        ledger.finished(report(key));
        assert_eq!(sent(&mut ledger), Vec::<String>::new());
        ledger.connected();
        assert_eq!(sent(&mut ledger), ["finished m-00003 a7"]);
        // Written but the connection broke before the Ack.
        ledger.disconnected();
        ledger.connected();
        assert_eq!(sent(&mut ledger), ["finished m-00003 a7"]);
        assert!(!ledger.idle());
        ledger.acked(key);
        assert!(ledger.idle());
        ledger.disconnected();
        ledger.connected();
        assert_eq!(sent(&mut ledger), Vec::<String>::new());
    }

    /// A repeated assignment of a known attempt is refused, whether it
    /// still runs or was reported; a new epoch of the task is not.
    #[test]
    fn an_attempt_runs_once() {
        let key = (JobId::new(), TaskId::Reduce(0), AttemptEpoch(1));
        let mut ledger = AttemptLedger::default();
        ledger.connected();
        assert!(ledger.assigned(key));
        assert!(!ledger.assigned(key));
        ledger.finished(report(key));
        assert!(!ledger.assigned(key));
        assert!(ledger.assigned((key.0, key.1, AttemptEpoch(2))));
    }

    /// Draining is said on every session, and the worker may stop only
    /// when nothing runs and every report was acknowledged.
    #[test]
    fn a_draining_worker_stops_only_when_idle() {
        let key = (JobId::new(), TaskId::Map(0), AttemptEpoch(1));
        let mut ledger = AttemptLedger::default();
        ledger.connected();
        assert!(ledger.assigned(key));
        ledger.drain();
        ledger.drain();
        assert_eq!(sent(&mut ledger), ["Draining"]);
        assert!(!ledger.drained());
        ledger.finished(report(key));
        assert!(!ledger.drained());
        ledger.disconnected();
        ledger.connected();
        assert_eq!(sent(&mut ledger), ["finished m-00000 a1", "Draining"]);
        ledger.acked(key);
        assert!(ledger.drained());
    }
}
