//! The verified-token cache: tokens whose signature verified, so the next
//! request with the same token skips the Ed25519 check.
//!
//! A stampede presents the same few thousand tokens over and over, and one
//! verification costs tens of microseconds, while a lookup costs well under
//! one. Two things make the cache safe to lean on under load, and both come
//! from [`quick_cache`] (a well-kept crate; measured against a hand-written
//! sharded map it was as fast or faster on hits and past its capacity, with
//! the same hit rates):
//!
//! * **No global lock.** The map is split into shards, each with its own
//!   lock; hits take a shared lock on one shard, and a miss takes one
//!   shard's write lock only for the insert (the verification itself runs
//!   outside any lock, in [`super::TokenVerifier::verify_cached`]), so new
//!   tokens arriving at once do not queue behind each other.
//! * **Gradual eviction.** A full cache evicts one entry per insert, by
//!   S3-FIFO: tokens seen once go first, tokens in use stay, instead of the
//!   whole cache being emptied at its cap, which sent every buyer back to a
//!   full signature check at the same moment. Expired tokens are never used
//!   again, so they are among the first to go.
//!
//! Only successes are cached; expiry is still checked on every use by the
//! caller, and the cached claims are exactly the ones the signature covered.

use super::Claims;

pub struct VerifiedTokens {
    cache: quick_cache::sync::Cache<Box<str>, Claims>,
}

impl VerifiedTokens {
    /// A cache that holds a working set of `working_set` tokens. Shards
    /// fill unevenly, so it is given an eighth more room: memory stays
    /// bounded by about `working_set × 9/8` tokens.
    pub fn new(working_set: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(working_set + working_set / 8),
        }
    }

    /// The claims of a token that verified before, if it is still here.
    pub fn get(&self, token: &str) -> Option<Claims> {
        self.cache.get(token)
    }

    /// Remembers a token that just verified.
    pub fn insert(&self, token: &str, claims: Claims) {
        self.cache.insert(token.into(), claims);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            iss: "i".into(),
            aud: "a".into(),
            iat: 0,
            exp: 1_000_000,
            nbf: None,
            sale: None,
            jti: None,
        }
    }

    fn token(i: usize) -> String {
        // Like a JWT: a long shared prefix, a distinct tail.
        format!("{}.{i:020}", "h".repeat(300))
    }

    #[test]
    fn a_working_set_of_the_nominal_size_fits() {
        let cache = VerifiedTokens::new(10_000);
        for i in 0..10_000 {
            cache.insert(&token(i), claims(&i.to_string()));
        }
        let hits = (0..10_000)
            .filter(|i| {
                cache
                    .get(&token(*i))
                    .is_some_and(|c| c.sub == i.to_string())
            })
            .count();
        assert_eq!(hits, 10_000);
    }

    #[test]
    fn a_full_cache_evicts_a_little_at_a_time_never_all_at_once() {
        let cache = VerifiedTokens::new(8_000);
        let bound = cache.cache.capacity() as usize;
        let mut smallest_after_filling = usize::MAX;
        for i in 0..50_000 {
            cache.insert(&token(i), claims("u"));
            let len = cache.cache.len();
            assert!(len <= bound, "bounded: {len} > {bound}");
            if i > 2 * bound {
                smallest_after_filling = smallest_after_filling.min(len);
            }
        }
        assert!(
            smallest_after_filling >= bound * 9 / 10,
            "{smallest_after_filling} of {bound}"
        );
    }

    #[test]
    fn tokens_in_use_survive_a_flood_of_one_off_tokens() {
        let cache = VerifiedTokens::new(8_000);
        let hot: Vec<String> = (0..1_000).map(|i| format!("hot-{}", token(i))).collect();
        for t in &hot {
            cache.insert(t, claims("hot"));
        }
        // Buyers in a stampede reuse their tokens; a scraper's are new each time.
        for round in 0..5 {
            for t in &hot {
                assert!(cache.get(t).is_some() || round == 0, "round {round}");
            }
            for i in 0..20_000 {
                cache.insert(&token(round * 20_000 + i), claims("once"));
            }
        }
        let kept = hot.iter().filter(|t| cache.get(t).is_some()).count();
        assert!(kept >= 950, "{kept} of 1,000 hot tokens kept");
    }

    #[test]
    fn concurrent_hits_and_misses_agree_with_what_was_inserted() {
        let cache = std::sync::Arc::new(VerifiedTokens::new(4_096));
        let threads: Vec<_> = (0..4)
            .map(|n| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        let t = format!("t{n}-{}", i % 3_000);
                        match cache.get(&t) {
                            Some(c) => assert_eq!(c.sub, t),
                            None => cache.insert(&t, claims(&t)),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(cache.cache.len() as u64 <= cache.cache.capacity());
    }
}
