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

use crate::protocol::{AttemptEpoch, AttemptReport, JobId, TaskId};
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
