//! The series of live read receipts (see the router's `receipts`): database reads, reads folded
//! into a later one, reads that failed, frames queued to sessions, and reads that sent nothing
//! because the bound of pending threads was hit. Static labels only; never a user id.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

pub struct ReceiptMetrics {
    reads: Counter,
    coalesced: Counter,
    failures: Counter,
    sent: Counter,
    dropped: Counter,
}

impl ReceiptMetrics {
    pub(super) fn register(r: &mut Registry) -> ReceiptMetrics {
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        ReceiptMetrics {
            reads: counter(
                "read_receipt_reads",
                "chat_read_receipt reads for read_receipt frames (at most one per thread per READ_RECEIPT_COALESCE_SECS)",
            ),
            coalesced: counter(
                "read_receipts_coalesced",
                "Read-state changes folded into a later read_receipt of the same thread",
            ),
            failures: counter("read_receipt_failures", "chat_read_receipt reads that failed (no frame sent for them)"),
            sent: counter("read_receipts_sent", "read_receipt frames queued to client sessions (one per session)"),
            dropped: counter(
                "read_receipts_dropped",
                "Read-state changes that sent no read_receipt because READ_RECEIPT_MAX_THREADS threads were pending",
            ),
        }
    }

    pub fn read(&self) {
        self.reads.inc();
    }
    pub fn coalesced(&self) {
        self.coalesced.inc();
    }
    pub fn failed(&self) {
        self.failures.inc();
    }
    pub fn sent(&self, sessions: usize) {
        self.sent.inc_by(sessions as u64);
    }
    /// Returns the total dropped so far, this one included.
    pub fn dropped(&self) -> u64 {
        self.dropped.inc() + 1
    }
}
