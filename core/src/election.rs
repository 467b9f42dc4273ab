//! Who pulls an image from the registry: the per-image election over a Kubernetes Lease, as a pure
//! state machine, plus the coordination-free rule used without (or when losing) the API server.
//!
//! ```text
//!  poll(now, view, rng) ──► [Get | Create | Renew | TakeOver | Yield | Release | Wait{until}
//!        ▲                   | PullFromRegistry | FeedFromSwarm | FallbackCoordinationFree]
//!        └── on_get(now, Observed) / on_write(now, Written) / complete() / abandon() ◄── adapter
//! ```
//!
//! Rules: the top `k` live members of the rendezvous ranking of the image contend (rank r first
//! reads after r × `stagger`): absent → create, held → follow and re-read at its expiry
//! (`renewTime + leaseDuration + clock_skew`), expired or holder-less → replace with its
//! resourceVersion. The holder renews every third of the duration. Others wait for a provider in
//! the swarm; each missed `provider_wait` doubles the contender set (k, 2k, 4k, …). A Lease deleted
//! while providers are around means the image is complete (or pulled by a node in fallback): no
//! new pull. An API
//! error switches to the fallback rule (the top-ranked wanting member pulls) and retries with
//! jittered exponential backoff until the API answers.
//!
//! Coordination-free mode ranks only the live members that want the image (the adapter reads
//! their want records; the first decision waits `settle` unless a provider is already there, so
//! nodes that start together see each other's). With a provider in view, follow; without one, the
//! top-ranked pulls, and each missed `provider_wait` lets the next ranks pull too (1, 2, 4, …). A
//! puller keeps pulling until it sees a provider that outranks it (two pullers whose views
//! differed: the lower one follows), so exactly one puller remains once views agree.
//!
//! Invariants: at most one node believes it holds an unexpired Lease (the holder's own expiry is
//! `clock_skew` before anyone else's); API calls per image are bounded by the contender set, not
//! the cluster size; at most one API call is outstanding; `PullFromRegistry`/`FeedFromSwarm` are
//! emitted only on role changes. Times are the caller's monotonic clock; the adapter maps the
//! Lease's wall-clock `renewTime` onto it.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::rendezvous;
use crate::Digest;

mod naming;
#[cfg(test)]
mod tests;
mod types;

pub use naming::{
    contenders, digest_label, lease_name, want_key, DIGEST_LABEL_HEX, LEASE_NAME_HEX,
    LEASE_NAME_PREFIX,
};
pub use types::{Action, ElectionConfig, ElectionMode, LeaseRecord, Observed, Role, View, Written};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Get,
    Create,
    TakeOver,
    Renew,
    Release,
    Yield,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Not a contender: wait for a provider until the deadline. At each missed deadline the
    /// contender set doubles (top k·2^(round+1)), so a slow puller does not bring every node to
    /// the API server at once.
    AwaitProviders {
        deadline: Instant,
        round: u32,
    },
    /// Not contending: a provider serves the image (or the holder released a complete image).
    SwarmFollow,
    /// Contending: make `call` at `at` (`TakeOver`/`Create` use `known`).
    Contend {
        at: Instant,
        call: Call,
    },
    Holding {
        renew_at: Instant,
        expires: Instant,
    },
    Following {
        check_at: Instant,
    },
    Fallback {
        retry_at: Instant,
    },
    /// `LEASE=none`: see the module docs; `round` missed deadlines widened the pullers to 2^round.
    CoordinationFree {
        deadline: Instant,
        round: u32,
    },
    Done,
}

/// The election for one image on one node.
#[derive(Debug)]
pub struct Election<M> {
    image: Digest,
    me: M,
    holder_identity: String,
    cfg: ElectionConfig,
    phase: Phase,
    /// No first decision before this unless a provider is in view (want records settle).
    settle: Instant,
    role: Role,
    pending: Option<Call>,
    /// The last Lease we read or wrote.
    known: Option<LeaseRecord>,
    failures: u32,
    fallback_announced: bool,
    /// We saw another holder and then no Lease: the image was completed and released.
    released_seen: bool,
    providers: bool,
    release_wanted: bool,
    yield_wanted: bool,
    /// A renew found the Lease taken over: emit `FeedFromSwarm` on the next poll.
    lost: bool,
}

impl<M: AsRef<[u8]> + Clone + PartialEq> Election<M> {
    /// `me` is this node's ranking id (as it appears among live members); `holder_identity` is
    /// what it writes as `holderIdentity` (the node name).
    pub fn new(
        image: Digest,
        me: M,
        holder_identity: String,
        cfg: ElectionConfig,
        now: Instant,
    ) -> Self {
        let phase = match cfg.mode {
            ElectionMode::Kube => Phase::AwaitProviders {
                deadline: now + cfg.provider_wait,
                round: 0,
            },
            ElectionMode::CoordinationFree => Phase::CoordinationFree {
                deadline: now + cfg.settle + cfg.provider_wait,
                round: 0,
            },
        };
        let settle = now + cfg.settle;
        Self {
            image,
            me,
            holder_identity,
            cfg,
            phase,
            settle,
            role: Role::Undecided,
            pending: None,
            known: None,
            failures: 0,
            fallback_announced: false,
            released_seen: false,
            providers: false,
            release_wanted: false,
            yield_wanted: false,
            lost: false,
        }
    }

    pub fn image(&self) -> &Digest {
        &self.image
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether we hold the Lease (as far as we know).
    pub fn is_holder(&self) -> bool {
        matches!(self.phase, Phase::Holding { .. })
    }

    /// Whether the coordination-free rule currently decides because the API server failed.
    pub fn in_fallback(&self) -> bool {
        matches!(self.phase, Phase::Fallback { .. })
    }

    /// Whether we hold the Lease and it has not expired by our own reckoning at `now`.
    pub fn holds_at(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Holding { expires, .. } if now < expires)
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done && self.pending.is_none()
    }

    /// The last Lease we read or wrote.
    pub fn known_lease(&self) -> Option<&LeaseRecord> {
        self.known.as_ref()
    }

    /// The identity we write as holder.
    pub fn holder_identity(&self) -> &str {
        &self.holder_identity
    }

    /// Whether `other` ranks above us for this image (a pairwise order, the same on every node).
    fn outranked_by(&self, other: &M) -> bool {
        let key = self.image.to_string();
        *other != self.me
            && rendezvous::rank(key.as_bytes(), &[self.me.clone(), other.clone()])[0] == other
    }

    /// Our rank among the live members (this node included), 0 = first.
    pub fn rank(&self, members: &[M]) -> usize {
        let mut all: Vec<M> = members.to_vec();
        if !all.contains(&self.me) {
            all.push(self.me.clone());
        }
        let key = self.image.to_string();
        let ranked = rendezvous::rank(key.as_bytes(), &all);
        ranked
            .iter()
            .position(|m| **m == self.me)
            .unwrap_or(usize::MAX)
    }

    /// The image is complete here: release the Lease if we hold it, then stop.
    pub fn complete(&mut self) {
        self.release_wanted = true;
        if !self.is_holder() && self.pending.is_none() {
            self.phase = Phase::Done;
        }
    }

    /// We stop before the image is complete (shutdown, pull failed): hand the Lease over, then stop.
    pub fn abandon(&mut self) {
        self.yield_wanted = true;
        if !self.is_holder() && self.pending.is_none() {
            self.phase = Phase::Done;
        }
    }

    /// Advances the machine; returns the actions to perform now (API calls one at a time).
    pub fn poll<R: Rng>(&mut self, now: Instant, view: View<'_, M>, rng: &mut R) -> Vec<Action> {
        self.providers = !view.providers.is_empty();
        let mut out = Vec::new();
        if self.pending.is_some() || self.phase == Phase::Done {
            return out;
        }
        if std::mem::take(&mut self.lost) {
            self.set_role(Role::Follow, &mut out);
        }
        let rank = self.rank(view.members);
        let want_rank = self.rank(view.wanting);
        let contender = rank < self.cfg.contenders;
        if self.release_wanted || self.yield_wanted {
            match &self.known {
                Some(rec) if self.is_holder() => {
                    let resource_version = rec.resource_version.clone();
                    return if self.release_wanted {
                        self.call(Call::Release, Action::Release { resource_version })
                    } else {
                        self.call(Call::Yield, Action::Yield { resource_version })
                    };
                }
                _ => {
                    self.phase = Phase::Done;
                    return out;
                }
            }
        }
        let free = matches!(self.phase, Phase::CoordinationFree { .. });
        if self.role == Role::Undecided && free && !self.providers && now < self.settle {
            out.push(Action::Wait { until: self.settle });
            return out;
        }
        match self.phase.clone() {
            Phase::CoordinationFree { deadline, round } => {
                self.coordination_free(now, view, want_rank, deadline, round, rng, &mut out);
            }
            Phase::AwaitProviders { deadline, round } => {
                if contender {
                    self.phase = self.first_contact(now, rank, rng);
                    out.extend(self.poll(now, view, rng));
                    return out;
                } else if self.providers {
                    self.phase = Phase::SwarmFollow;
                    self.set_role(Role::Follow, &mut out);
                } else if now >= deadline {
                    let widened = self
                        .cfg
                        .contenders
                        .saturating_mul(1usize.checked_shl(round + 1).unwrap_or(usize::MAX));
                    self.phase = if rank < widened {
                        let jitter = rng.gen_range(Duration::ZERO..=self.cfg.stagger);
                        Phase::Contend {
                            at: now + jitter,
                            call: Call::Get,
                        }
                    } else {
                        Phase::AwaitProviders {
                            deadline: now + self.cfg.provider_wait,
                            round: round.saturating_add(1),
                        }
                    };
                    out.extend(self.poll(now, view, rng));
                    return out;
                } else {
                    out.push(Action::Wait { until: deadline });
                }
            }
            Phase::SwarmFollow => {
                if !self.providers {
                    self.released_seen = false;
                    self.phase = Phase::AwaitProviders {
                        deadline: now + self.cfg.provider_wait,
                        round: 0,
                    };
                    out.extend(self.poll(now, view, rng));
                    return out;
                } else if contender && !self.released_seen {
                    self.phase = self.first_contact(now, rank, rng);
                    out.extend(self.poll(now, view, rng));
                    return out;
                }
                self.set_role(Role::Follow, &mut out);
            }
            Phase::Contend { at, call } => {
                if now < at {
                    out.push(Action::Wait { until: at });
                } else {
                    return self.contend_call(call);
                }
            }
            Phase::Holding { renew_at, expires } => {
                if now >= expires {
                    // Not renewed in time (API errors, or we stalled): others may have taken over.
                    // Read the Lease; an API error there falls back to the ranking.
                    self.phase = Phase::Contend {
                        at: now,
                        call: Call::Get,
                    };
                    out.extend(self.poll(now, view, rng));
                    return out;
                }
                self.set_role(Role::Pull, &mut out);
                if now >= renew_at {
                    let rv = self.known_rv();
                    out.extend(self.call(
                        Call::Renew,
                        Action::Renew {
                            resource_version: rv,
                        },
                    ));
                } else {
                    out.push(Action::Wait { until: renew_at });
                }
            }
            Phase::Following { check_at } => {
                self.set_role(Role::Follow, &mut out);
                if !contender && self.providers {
                    // A non-contender that timed out: providers exist now, stop using the API.
                    self.phase = Phase::SwarmFollow;
                } else if now >= check_at {
                    out.extend(self.call(Call::Get, Action::Get));
                } else {
                    out.push(Action::Wait { until: check_at });
                }
            }
            Phase::Fallback { retry_at } => {
                if !self.fallback_announced {
                    self.fallback_announced = true;
                    out.push(Action::FallbackCoordinationFree);
                }
                let role = if want_rank == 0 {
                    Role::Pull
                } else {
                    Role::Follow
                };
                self.set_role(role, &mut out);
                if now >= retry_at {
                    out.extend(self.call(Call::Get, Action::Get));
                } else {
                    out.push(Action::Wait { until: retry_at });
                }
            }
            Phase::Done => {}
        }
        out
    }

    /// One poll in coordination-free mode (see the module docs).
    #[allow(clippy::too_many_arguments)] // the unpacked phase; a struct would only rename them
    fn coordination_free<R: Rng>(
        &mut self,
        now: Instant,
        view: View<'_, M>,
        rank: usize,
        deadline: Instant,
        round: u32,
        rng: &mut R,
        out: &mut Vec<Action>,
    ) {
        let reset = Phase::CoordinationFree {
            deadline: now + self.cfg.provider_wait,
            round: 0,
        };
        let idle = Action::Wait {
            until: now + self.cfg.lease_duration / 3,
        };
        if self.role == Role::Pull {
            if view.providers.iter().any(|p| self.outranked_by(p)) {
                // Another puller ranks above us (our views differed when we chose): follow it.
                self.set_role(Role::Follow, out);
                self.phase = reset;
            }
            out.push(idle);
        } else if self.providers {
            self.set_role(Role::Follow, out);
            self.phase = reset;
            out.push(idle);
        } else if rank < 1usize.checked_shl(round).unwrap_or(usize::MAX) {
            self.set_role(Role::Pull, out);
            out.push(idle);
        } else if now >= deadline {
            // Nobody pulls in time (the ranked-first does not, or its want record misled us).
            self.phase = Phase::CoordinationFree {
                deadline: now + self.cfg.provider_wait,
                round: round.saturating_add(1),
            };
            out.extend(self.poll(now, view, rng));
        } else {
            self.set_role(Role::Follow, out);
            out.push(Action::Wait { until: deadline });
        }
    }

    /// The answer to [`Action::Get`].
    pub fn on_get<R: Rng>(&mut self, now: Instant, observed: Observed, rng: &mut R) {
        self.pending = None;
        if self.phase == Phase::Done {
            return;
        }
        match observed {
            Observed::ApiError => self.enter_fallback(now, rng),
            Observed::Absent => {
                self.failures = 0;
                self.known = None;
                if self.providers {
                    // No Lease but a provider: a holder finished and released (the swarm has the
                    // image; we may have arrived late and never seen it), or a node pulls without
                    // the Lease (its fallback). Follow it rather than pull the image again.
                    self.released_seen = true;
                    self.phase = Phase::SwarmFollow;
                } else {
                    self.phase = Phase::Contend {
                        at: now,
                        call: Call::Create,
                    };
                }
            }
            Observed::Lease(rec) => {
                self.failures = 0;
                self.on_lease(now, rec);
            }
        }
    }

    /// The answer to the last write action.
    pub fn on_write<R: Rng>(&mut self, now: Instant, written: Written, rng: &mut R) {
        let Some(call) = self.pending.take() else {
            return;
        };
        match (call, written) {
            (Call::Release | Call::Yield, _) => {
                self.known = None;
                self.phase = Phase::Done;
            }
            (_, Written::ApiError) if call == Call::Renew => {
                let Phase::Holding { expires, .. } = self.phase else {
                    return;
                };
                let retry = now + self.backoff(rng);
                self.phase = Phase::Holding {
                    renew_at: retry.min(expires),
                    expires,
                };
            }
            (_, Written::ApiError) => self.enter_fallback(now, rng),
            (_, Written::Ok(rec)) => {
                self.failures = 0;
                let d = rec.duration.unwrap_or(self.cfg.lease_duration);
                let base = rec.renew_time.unwrap_or(now);
                self.known = Some(rec);
                self.phase = Phase::Holding {
                    renew_at: base + d / 3,
                    expires: base + d,
                };
            }
            (Call::Renew, Written::Conflict | Written::NotFound) => {
                // Someone took the Lease over: stop pulling, learn who holds it.
                self.lost = true;
                self.known = None;
                self.phase = Phase::Contend {
                    at: now,
                    call: Call::Get,
                };
            }
            (Call::Create, Written::NotFound) => {
                // Creating cannot miss the object itself: the namespace is missing. Back off as
                // for an API error instead of looping on get/create.
                self.enter_fallback(now, rng);
            }
            (_, Written::Conflict | Written::NotFound) => {
                let delay = rng.gen_range(Duration::ZERO..=self.cfg.retry_min);
                self.phase = Phase::Contend {
                    at: now + delay,
                    call: Call::Get,
                };
            }
        }
    }

    fn on_lease(&mut self, now: Instant, rec: LeaseRecord) {
        let expires = rec.expires_at(&self.cfg);
        let mine = rec.holder.as_deref() == Some(self.holder_identity.as_str());
        self.known = Some(rec);
        match expires {
            Some(at) if mine && now + self.cfg.clock_skew < at => {
                // Ours from an earlier life (or a lost answer): renew right away. It protects us
                // until its renew time + duration, not a moment longer.
                self.phase = Phase::Holding {
                    renew_at: now,
                    expires: at - self.cfg.clock_skew,
                };
            }
            Some(at) if !mine && now < at => self.phase = Phase::Following { check_at: at },
            _ => {
                self.phase = Phase::Contend {
                    at: now,
                    call: Call::TakeOver,
                }
            }
        }
    }

    fn contend_call(&mut self, call: Call) -> Vec<Action> {
        match call {
            Call::Create => self.call(Call::Create, Action::Create),
            Call::TakeOver => {
                let rv = self.known_rv();
                self.call(
                    Call::TakeOver,
                    Action::TakeOver {
                        resource_version: rv,
                    },
                )
            }
            _ => self.call(Call::Get, Action::Get),
        }
    }

    fn first_contact<R: Rng>(&self, now: Instant, rank: usize, rng: &mut R) -> Phase {
        let stagger = self.cfg.stagger * u32::try_from(rank).unwrap_or(u32::MAX);
        // The first-ranked goes at once; the others spread out around their slot.
        let jitter = if rank == 0 {
            Duration::ZERO
        } else {
            rng.gen_range(Duration::ZERO..=self.cfg.stagger / 4)
        };
        Phase::Contend {
            at: now + stagger + jitter,
            call: Call::Get,
        }
    }

    fn enter_fallback<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        if !matches!(self.phase, Phase::Fallback { .. }) {
            self.fallback_announced = false;
        }
        let retry_at = now + self.backoff(rng);
        self.phase = Phase::Fallback { retry_at };
    }

    /// Exponential backoff with full jitter in [b/2, b].
    fn backoff<R: Rng>(&mut self, rng: &mut R) -> Duration {
        let exp = self
            .cfg
            .retry_min
            .saturating_mul(1 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        let b = exp.min(self.cfg.retry_max);
        rng.gen_range(b / 2..=b)
    }

    fn known_rv(&self) -> String {
        self.known
            .as_ref()
            .map(|r| r.resource_version.clone())
            .unwrap_or_default()
    }

    fn call(&mut self, call: Call, action: Action) -> Vec<Action> {
        self.pending = Some(call);
        vec![action]
    }

    fn set_role(&mut self, role: Role, out: &mut Vec<Action>) {
        if self.role != role {
            self.role = role;
            out.push(match role {
                Role::Pull => Action::PullFromRegistry,
                _ => Action::FeedFromSwarm,
            });
        }
    }
}
