//! The series of the per-user budgets (see [`crate::fair`]): how often each budget was hit, and
//! the unread-count reads of read-state pushes with the updates folded into them. Static labels
//! only; never a user id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget: &'static str,
}

/// A per-user budget that was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// A `subscribe_thread` refused before its RLS check.
    SubscribeCheck,
    /// A resume replay from the database cut short (the client was sent to offline sync).
    ResumeReplay,
}

impl Budget {
    fn label(self) -> &'static str {
        match self {
            Budget::SubscribeCheck => "subscribe_check",
            Budget::ResumeReplay => "resume_replay",
        }
    }
}

pub struct FairnessMetrics {
    budget_hits: Family<BudgetLabels, Counter>,
    read_state_reads: Counter,
    read_state_coalesced: Counter,
}

impl FairnessMetrics {
    pub(super) fn register(r: &mut Registry) -> FairnessMetrics {
        let budget_hits = Family::<BudgetLabels, Counter>::default();
        for budget in [Budget::SubscribeCheck, Budget::ResumeReplay] {
            budget_hits.get_or_create(&BudgetLabels { budget: budget.label() }).inc_by(0);
        }
        r.register(
            "user_budget_hits",
            "Requests of a user over a per-user budget (subscribe_check: SUBSCRIBE_CHECKS_PER_SEC; resume_replay: RESUME_DB_PAGES_PER_MIN)",
            budget_hits.clone(),
        );
        let read_state_reads = Counter::default();
        r.register(
            "read_state_reads",
            "Unread-count reads for thread_read pushes (at most one per user per READ_STATE_COALESCE_SECS)",
            read_state_reads.clone(),
        );
        let read_state_coalesced = Counter::default();
        r.register(
            "read_state_coalesced",
            "Read-state updates folded into a later unread-count read of the same user",
            read_state_coalesced.clone(),
        );
        FairnessMetrics { budget_hits, read_state_reads, read_state_coalesced }
    }

    pub fn budget_hit(&self, budget: Budget) {
        self.budget_hits.get_or_create(&BudgetLabels { budget: budget.label() }).inc();
    }
    pub fn read_state_read(&self) {
        self.read_state_reads.inc();
    }
    pub fn read_state_coalesced(&self) {
        self.read_state_coalesced.inc();
    }
}
