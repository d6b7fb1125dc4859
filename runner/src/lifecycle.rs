//! The migration lifecycle: states and substates as users see them, and the transitions
//! between them. An illegal transition is a bug; the state machine refuses it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    InProgress,
    WaitingForUserAction,
    Succeeded,
    Failed,
    ValidationFailed,
    /// A cancel is cleaning up what the migration made; it stays here, with the leftovers
    /// listed, until everything is gone (then Canceled).
    Canceling,
    Canceled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Substate {
    PerformingPreRequisiteSteps,
    ValidationInProgress,
    MigratingData,
    WaitingForCutoverTrigger,
    CompletingMigration,
    Completed,
    Failed,
    /// The cloud service's name for a cancel at work.
    CancelingRequestedDBMigrations,
    Canceled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub substate: Substate,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::fmt::Display for Substate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.state, self.substate)
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (state, substate) = s.split_once('/').ok_or_else(|| format!("bad status {s:?}"))?;
        let state = serde_json::from_value(serde_json::Value::String(state.into())).map_err(|_| format!("bad state {state:?}"))?;
        let substate = serde_json::from_value(serde_json::Value::String(substate.into())).map_err(|_| format!("bad substate {substate:?}"))?;
        Ok(Status { state, substate })
    }
}

use State as S;
use Substate as Sub;

impl Status {
    pub const CREATED: Status = Status { state: S::InProgress, substate: Sub::PerformingPreRequisiteSteps };
    pub const VALIDATING: Status = Status { state: S::InProgress, substate: Sub::ValidationInProgress };
    pub const MIGRATING: Status = Status { state: S::InProgress, substate: Sub::MigratingData };
    pub const WAITING_FOR_CUTOVER: Status = Status { state: S::WaitingForUserAction, substate: Sub::WaitingForCutoverTrigger };
    pub const COMPLETING: Status = Status { state: S::InProgress, substate: Sub::CompletingMigration };
    pub const SUCCEEDED: Status = Status { state: S::Succeeded, substate: Sub::Completed };
    pub const VALIDATION_FAILED: Status = Status { state: S::ValidationFailed, substate: Sub::Completed };
    pub const FAILED: Status = Status { state: S::Failed, substate: Sub::Failed };
    pub const CANCELING: Status = Status { state: S::Canceling, substate: Sub::CancelingRequestedDBMigrations };
    pub const CANCELED: Status = Status { state: S::Canceled, substate: Sub::Canceled };

    pub const ALL: [Status; 10] = [
        Status::CREATED,
        Status::VALIDATING,
        Status::MIGRATING,
        Status::WAITING_FOR_CUTOVER,
        Status::COMPLETING,
        Status::SUCCEEDED,
        Status::VALIDATION_FAILED,
        Status::FAILED,
        Status::CANCELING,
        Status::CANCELED,
    ];

    /// Not ended: it blocks another migration on the same target, and `list --filter
    /// Active` shows it. A Canceling migration still has work (cleanup) to finish.
    pub fn is_active(&self) -> bool {
        matches!(self.state, S::InProgress | S::WaitingForUserAction | S::Canceling)
    }

    /// Whether a cancel may start from here: any migration not ended, and a Failed one (to
    /// clean up what it made). A Canceling one is canceled again to finish its cleanup.
    pub fn can_cancel(&self) -> bool {
        matches!(self.state, S::InProgress | S::WaitingForUserAction | S::Failed | S::Canceling)
    }

    /// Whether the lifecycle allows going from `self` to `next`. The ways out of Failed are
    /// `resume` (back to the step that failed) and a cancel; out of Canceling only Canceled.
    pub fn can_become(&self, next: Status) -> bool {
        if *self == Status::FAILED {
            return [Status::CREATED, Status::VALIDATING, Status::MIGRATING, Status::CANCELING].contains(&next);
        }
        if *self == Status::CANCELING {
            return next == Status::CANCELED;
        }
        if !self.is_active() {
            return false;
        }
        if next == Status::FAILED || next == Status::CANCELING {
            return true;
        }
        let allowed: &[Status] = match *self {
            Status::CREATED => &[Status::VALIDATING, Status::MIGRATING],
            Status::VALIDATING => &[Status::SUCCEEDED, Status::VALIDATION_FAILED, Status::MIGRATING],
            Status::MIGRATING => &[Status::COMPLETING, Status::WAITING_FOR_CUTOVER],
            Status::WAITING_FOR_CUTOVER => &[Status::COMPLETING],
            Status::COMPLETING => &[Status::SUCCEEDED],
            _ => &[],
        };
        allowed.contains(&next)
    }
}

/// A transition the lifecycle does not allow.
#[derive(Debug, thiserror::Error)]
#[error("migration {name}: illegal transition {from} → {to}")]
pub struct IllegalTransition {
    pub name: String,
    pub from: Status,
    pub to: Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 10] = Status::ALL;

    #[test]
    fn terminal_states_are_final_but_a_failed_one_can_resume_or_be_canceled() {
        for from in [Status::SUCCEEDED, Status::VALIDATION_FAILED, Status::CANCELED] {
            assert!(ALL.iter().all(|to| !from.can_become(*to)), "{from} must be final");
            assert!(!from.can_cancel());
        }
        let from_failed: Vec<Status> = ALL.into_iter().filter(|to| Status::FAILED.can_become(*to)).collect();
        assert_eq!(from_failed, [Status::CREATED, Status::VALIDATING, Status::MIGRATING, Status::CANCELING]);
        let from_canceling: Vec<Status> = ALL.into_iter().filter(|to| Status::CANCELING.can_become(*to)).collect();
        assert_eq!(from_canceling, [Status::CANCELED]);
        assert!(Status::FAILED.can_cancel() && Status::CANCELING.can_cancel() && Status::WAITING_FOR_CUTOVER.can_cancel());
    }

    #[test]
    fn the_documented_flows_are_allowed_and_shortcuts_are_not() {
        let flow = |steps: &[Status]| steps.windows(2).all(|w| w[0].can_become(w[1]));
        assert!(flow(&[Status::CREATED, Status::VALIDATING, Status::SUCCEEDED]));
        assert!(flow(&[Status::CREATED, Status::VALIDATING, Status::VALIDATION_FAILED]));
        assert!(flow(&[Status::CREATED, Status::VALIDATING, Status::MIGRATING, Status::COMPLETING, Status::SUCCEEDED]));
        assert!(flow(&[Status::CREATED, Status::MIGRATING, Status::WAITING_FOR_CUTOVER, Status::COMPLETING, Status::SUCCEEDED]));
        assert!(flow(&[Status::WAITING_FOR_CUTOVER, Status::CANCELING, Status::CANCELED]));
        assert!(!Status::WAITING_FOR_CUTOVER.can_become(Status::CANCELED), "a cancel always passes Canceling");
        assert!(!Status::CREATED.can_become(Status::SUCCEEDED));
        assert!(!Status::MIGRATING.can_become(Status::VALIDATION_FAILED));
        assert!(!Status::CREATED.can_become(Status::WAITING_FOR_CUTOVER));
    }

    #[test]
    fn status_round_trips_through_text() {
        for s in ALL {
            assert_eq!(s.to_string().parse::<Status>().unwrap(), s);
        }
    }
}
