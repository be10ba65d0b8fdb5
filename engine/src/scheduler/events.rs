//! Run events: every transition of a run (started, step queued / started / finished, log line,
//! finished) is published on an in-process broadcast channel. Subscribers (the CLI renderer,
//! later the API's SSE streams) never block the run: a slow one lags and is told how many events
//! it missed.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::{RunStatus, StepStatus};
use crate::store::LogChunk;

use super::StepReport;

/// Capacity of the channel; a subscriber further behind than this lags.
pub const CAPACITY: usize = 1024;

/// Something that happened in a run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        operation: String,
        steps: usize,
    },
    StepQueued {
        run_id: String,
        service: String,
    },
    StepStarted {
        run_id: String,
        service: String,
        step_id: i64,
    },
    /// Lines of a step's log (one chunk: consecutive lines that arrived together).
    Log {
        run_id: String,
        service: String,
        chunk: LogChunk,
    },
    StepFinished {
        run_id: String,
        report: StepReport,
    },
    RunFinished {
        run_id: String,
        status: RunStatus,
    },
}

impl Event {
    /// The step status this event sets, if any.
    pub fn step_status(&self) -> Option<(&str, StepStatus)> {
        match self {
            Event::StepQueued { service, .. } => Some((service, StepStatus::Queued)),
            Event::StepStarted { service, .. } => Some((service, StepStatus::Running)),
            Event::StepFinished { report, .. } => Some((&report.service, report.status)),
            _ => None,
        }
    }
}

/// The sending side, shared by a run's tasks.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Publishes an event; nobody listening is fine.
    pub fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
