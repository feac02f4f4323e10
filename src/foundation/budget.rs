//! A server-wide budget of something requests cost (bytes of bodies, bytes staged on disk,
//! pixels being decoded): a request takes its share before it pays the cost and gives it back
//! when the share is dropped.
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A request's share of a budget; given back when dropped.
pub type Share = OwnedSemaphorePermit;

pub struct Budget {
    units: Arc<Semaphore>,
    /// What one unit counts (a semaphore takes at most `u32::MAX` units at once).
    unit: u64,
    /// The whole budget, in units.
    total: u32,
}

impl Budget {
    /// A budget of `total` (bytes, pixels), counted in units of `unit`.
    pub fn new(total: u64, unit: u64) -> Self {
        let total = Self::units_of(total, unit);
        Self { units: Arc::new(Semaphore::new(total as usize)), unit, total }
    }

    fn units_of(amount: u64, unit: u64) -> u32 {
        amount.div_ceil(unit).min(u64::from(u32::MAX)).min(Semaphore::MAX_PERMITS as u64) as u32
    }

    /// Units for `amount`: at least one, at most the whole budget (more could never be had).
    fn units(&self, amount: u64) -> u32 {
        Self::units_of(amount, self.unit).clamp(1, self.total.max(1))
    }

    /// A share of `amount` now, or `None` while others hold the budget.
    pub fn try_take(&self, amount: u64) -> Option<Share> {
        self.units.clone().try_acquire_many_owned(self.units(amount)).ok()
    }

    /// A share of `amount` once the budget has it; `None` as soon as `give_up()` says so (looked
    /// at every 50 ms while waiting).
    pub async fn take_unless(&self, amount: u64, give_up: impl Fn() -> bool) -> Option<Share> {
        let acquire = self.units.clone().acquire_many_owned(self.units(amount));
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                share = &mut acquire => return Some(share.expect("a budget is never closed")),
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {
                    if give_up() {
                        return None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn shares_are_counted_in_units_and_given_back() {
        let b = Budget::new(4096, 1024);
        let first = b.try_take(3000).expect("3 of 4 units");
        assert!(b.try_take(1025).is_none(), "2 units when 1 is left");
        let second = b.try_take(1).expect("the last unit");
        drop((first, second));
        // More than the whole budget takes the whole budget.
        assert!(b.try_take(1 << 40).is_some());
    }
}
