//! A client-side rate limit for sends: starts are spaced evenly at most
//! `rate` per second (no bursts), and a provider's `Retry-After` holds every
//! later start until it has passed.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(rate_per_second: f64) -> RateLimiter {
        let interval = Duration::from_secs_f64(1.0 / rate_per_second.max(0.001));
        RateLimiter {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Wait for the next start slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().expect("limiter lock");
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// No start before `until`.
    pub fn hold_until(&self, until: Instant) {
        let mut next = self.next.lock().expect("limiter lock");
        *next = (*next).max(until);
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
        limiter.acquire().await;
        assert_eq!(begin.elapsed(), Duration::from_secs(3));
    }
}
