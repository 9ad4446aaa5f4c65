//! A client-side rate limit for sends: starts are spaced evenly at most
//! `rate` per second (no bursts), and a provider's `Retry-After` holds every
//! later start until it has passed.
//!
//! Start slots are reserved when reports are claimed ([`RateLimiter::reserve`]),
//! so the worker knows how many it can start within a window
//! ([`RateLimiter::starts_within`]) and claims no more than that.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct RateLimiter {
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    /// The next free start slot.
    next: Instant,
    /// No start before this (a provider's `Retry-After`).
    hold: Instant,
}

impl RateLimiter {
    pub fn new(rate_per_second: f64) -> RateLimiter {
        let interval = Duration::from_secs_f64(1.0 / rate_per_second.max(0.001));
        let now = Instant::now();
        RateLimiter {
            interval,
            state: Mutex::new(State {
                next: now,
                hold: now,
            }),
        }
    }

    /// Take the next start slot: when the caller may start.
    pub fn reserve(&self) -> Instant {
        let mut state = self.state.lock().expect("limiter lock");
        let slot = state.next.max(state.hold).max(Instant::now());
        state.next = slot.checked_add(self.interval).unwrap_or(slot);
        slot
    }

    /// Wait for the next start slot.
    pub async fn acquire(&self) {
        tokio::time::sleep_until(self.reserve()).await;
    }

    /// How many starts could be reserved now that begin within `window`
    /// from now: at least one unless a hold or earlier reservations fill
    /// the window.
    pub fn starts_within(&self, window: Duration) -> usize {
        let now = Instant::now();
        let state = self.state.lock().expect("limiter lock");
        let first = state.next.max(state.hold).max(now);
        let Some(end) = now.checked_add(window) else {
            return usize::MAX;
        };
        if first > end {
            return 0;
        }
        let room = end - first;
        let more = room.as_nanos() / self.interval.as_nanos().max(1);
        usize::try_from(more)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    }

    /// No start before `until`.
    pub fn hold_until(&self, until: Instant) {
        let mut state = self.state.lock().expect("limiter lock");
        state.hold = state.hold.max(until);
    }

    /// The end of the current hold, if one is in force.
    pub fn held_until(&self) -> Option<Instant> {
        let hold = self.state.lock().expect("limiter lock").hold;
        (hold > Instant::now()).then_some(hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_at_the_rate() {
        let limiter = RateLimiter::new(100.0);
        let begin = Instant::now();
        for _ in 0..101 {
            limiter.acquire().await;
        }
        // 101 starts at 100/s: the last one a second after the first.
        assert_eq!(begin.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limiter_does_not_save_up_a_burst() {
        let limiter = RateLimiter::new(10.0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let begin = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(begin.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_later_starts() {
        let limiter = RateLimiter::new(1000.0);
        let begin = Instant::now();
        limiter.hold_until(begin + Duration::from_secs(3));
        assert_eq!(limiter.held_until(), Some(begin + Duration::from_secs(3)));
        limiter.acquire().await;
        assert_eq!(begin.elapsed(), Duration::from_secs(3));
        assert_eq!(limiter.held_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_within_a_window_count_reservations_and_holds() {
        let limiter = RateLimiter::new(10.0);
        let window = Duration::from_secs(1);
        // Now, and every 100 ms up to the window's end.
        assert_eq!(limiter.starts_within(window), 11);
        for _ in 0..4 {
            limiter.reserve();
        }
        assert_eq!(limiter.starts_within(window), 7);
        // A tiny window still allows one start when the limiter is free.
        let idle = RateLimiter::new(10.0);
        assert_eq!(idle.starts_within(Duration::from_millis(1)), 1);
        idle.hold_until(Instant::now() + Duration::from_secs(5));
        assert_eq!(idle.starts_within(window), 0);
        assert_eq!(idle.starts_within(Duration::MAX), usize::MAX);
    }
}
