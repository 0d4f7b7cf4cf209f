//! Binders: the containers binderd starts, pools and hands out.
//!
//! A [`Binder`] is shared (`Arc`) between the pool's ready queue, the id and
//! token indexes and the task that started it. Its lifecycle is one atomic
//! state word, so that "hand this out" is a single compare-and-swap: whoever
//! wins the swap owns the handout, everybody else moves on.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::auth::Owner;
use crate::backend::Instance;
use crate::binding::BindingName;

/// Random id of a binder (128 bits, lower-case hex). Knowing it reveals the
/// location, so it is as unguessable as the token.
pub type BinderId = Arc<str>;
/// Random path secret in `/user/{token}/` (128 bits, lower-case hex).
pub type Token = Arc<str>;

/// 128 random bits from the thread's CSPRNG, as 32 hex digits.
pub fn random_secret() -> Arc<str> {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(32);
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out.into()
}

/// True for strings shaped like [`random_secret`]'s output.
pub fn is_secret_shaped(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a binder is in its life. `Idle` and `Assigned` are both "ready" to
/// the outside world: idle ones wait in the pool, assigned ones were handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    /// Starting for the pool.
    Starting = 0,
    /// Starting for a caller who already holds its id (the 202 answer).
    StartingClaimed = 1,
    /// Answering, in the pool, not handed out.
    Idle = 2,
    /// Handed out.
    Assigned = 3,
    Stopping = 4,
    Stopped = 5,
    Failed = 6,
    /// Handed out, container stopped; files kept, same location on resume.
    Paused = 7,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Starting,
            1 => State::StartingClaimed,
            2 => State::Idle,
            3 => State::Assigned,
            4 => State::Stopping,
            5 => State::Stopped,
            7 => State::Paused,
            _ => State::Failed,
        }
    }

    /// The state named in the API (`starting`, `ready`, `stopping`, ...).
    pub fn public_name(self) -> &'static str {
        match self {
            State::Starting | State::StartingClaimed => "starting",
            State::Idle | State::Assigned => "ready",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Paused => "paused",
        }
    }

    /// Holds a slot under `maxPool`.
    pub fn is_live(self) -> bool {
        !matches!(self, State::Stopped | State::Failed)
    }
}

pub struct Binder {
    pub id: BinderId,
    pub token: Token,
    pub binding: BindingName,
    /// The binding's profile it was made from (`None`: a binding without
    /// profiles).
    pub profile: Option<Arc<str>>,
    pub created_at: u64,
    /// The generation of its binding's template it was started from (a
    /// `PUT` starts a new one; see `Pool::generation`).
    pub generation: u64,
    state: AtomicU8,
    /// Replaced when a paused binder resumes (it may get a new address).
    instance: arc_swap::ArcSwapOption<Instance>,
    owner: OnceLock<Owner>,
    failure: OnceLock<String>,
    /// The repository (as `repo_key` spells it) a launch handed it out
    /// for (content given at launch), set once at the handout.
    pub launched_with: OnceLock<String>,
    /// Whether that repository's files were put in (or are being put).
    pub launch_files: AtomicBool,
    assigned_at: AtomicU64,
    /// Unix seconds of the last proxied request (for culling).
    last_activity: AtomicU64,
    /// Whether any request was proxied to it since it was made (binders
    /// handed out and never visited are reclaimed early).
    visited: AtomicBool,
    /// Woken on every state change, for callers waiting on a start.
    pub changed: tokio::sync::Notify,
    /// What it costs its key's quota; released when it stops.
    charge: OnceLock<Arc<crate::quota::Charge>>,
    /// The kernel started (and warmed up) in it while it waited in the pool,
    /// until the first client asking for a kernel takes it.
    warm_kernel: arc_swap::ArcSwapOption<WarmKernel>,
    /// The warm kernel's channels, opened before the handout and held for
    /// the first client that opens them (`api::warm_kernel::join`): the
    /// kernel's id and the held WebSocket.
    held_channels: std::sync::Mutex<Option<(String, crate::upstream::held::Held)>>,
    /// Its kept-alive connections for the proxy.
    pub conns: Arc<crate::upstream::Conns>,
}

/// A running kernel in a pooled binder (see `crate::kernel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmKernel {
    /// The kernel's id in the server (`api/kernels/{id}`).
    pub id: String,
    /// Its kernel spec's name.
    pub name: String,
}

impl std::fmt::Debug for Binder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in logs.
        f.debug_struct("Binder")
            .field("id", &self.id)
            .field("binding", &self.binding)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Binder {
    pub fn new(binding: BindingName, state: State) -> Binder {
        let binder = Binder::restore(random_secret(), random_secret(), binding, state, now_unix());
        binder.visited.store(false, Ordering::Relaxed);
        binder
    }

    /// Rebuilds a binder recorded before a restart. Whether it was visited
    /// before is not recorded, so it counts as visited.
    pub fn restore(
        id: BinderId,
        token: Token,
        binding: BindingName,
        state: State,
        created_at: u64,
    ) -> Binder {
        Binder {
            id,
            token,
            binding,
            profile: None,
            created_at,
            generation: 0,
            state: AtomicU8::new(state as u8),
            instance: arc_swap::ArcSwapOption::empty(),
            owner: OnceLock::new(),
            failure: OnceLock::new(),
            launched_with: OnceLock::new(),
            launch_files: AtomicBool::new(false),
            assigned_at: AtomicU64::new(0),
            last_activity: AtomicU64::new(now_unix()),
            visited: AtomicBool::new(true),
            changed: tokio::sync::Notify::new(),
            charge: OnceLock::new(),
            warm_kernel: arc_swap::ArcSwapOption::empty(),
            held_channels: std::sync::Mutex::new(None),
            conns: Arc::default(),
        }
    }

    /// The same binder, of template generation `generation`.
    pub fn of_generation(mut self, generation: u64) -> Binder {
        self.generation = generation;
        self
    }

    /// Made from `profile` (see [`Binder::profile`]).
    pub fn of_profile(mut self, profile: Option<Arc<str>>) -> Binder {
        self.profile = profile;
        self
    }

    /// Where the store files it: the binding's name, or `binding/profile`
    /// when made from a profile (a `/` is in no binding name).
    pub fn pool_key(&self) -> String {
        match &self.profile {
            Some(p) => format!("{}/{p}", self.binding),
            None => self.binding.to_string(),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Moves `from` → `to` if and only if the binder is in `from`. Exactly one
    /// of any number of racing callers wins.
    ///
    /// Only `pool` calls this and [`Binder::swap_state`] (through
    /// `pool::allocator::Counters`, which keeps its pool's counters in step
    /// with every change); `tests/house.rs` fails on a call anywhere else.
    pub(crate) fn cas_state(&self, from: State, to: State) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Moves to `to` from whatever state it was in; returns the old state.
    /// Only `pool` calls it (see [`Binder::cas_state`]).
    pub(crate) fn swap_state(&self, to: State) -> State {
        State::from_u8(self.state.swap(to as u8, Ordering::AcqRel))
    }

    /// Waits until the binder is no longer starting, or `timeout` passes.
    /// Returns the state it saw last.
    pub async fn wait_started(&self, timeout: std::time::Duration) -> State {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = self.state();
            if !matches!(state, State::Starting | State::StartingClaimed) {
                return state;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.state();
            }
        }
    }

    pub fn instance(&self) -> Option<Arc<Instance>> {
        self.instance.load_full()
    }

    pub fn set_instance(&self, instance: Instance) {
        self.instance.store(Some(Arc::new(instance)));
    }

    pub fn owner(&self) -> Option<&Owner> {
        self.owner.get()
    }

    fn set_owner(&self, owner: Owner) {
        let _ = self.owner.set(owner);
    }

    fn set_charge(&self, charge: Arc<crate::quota::Charge>) {
        if let Err(extra) = self.charge.set(charge) {
            extra.release();
        }
    }

    /// Gives the binder to `owner`, who pays `charge` for it (if it costs
    /// their quota anything). The one way a binder gets an owner.
    pub fn hand_to(&self, owner: Owner, charge: Option<Arc<crate::quota::Charge>>) {
        self.set_owner(owner);
        if let Some(c) = charge {
            self.set_charge(c);
        }
    }

    /// Gives its quota back (once).
    pub fn release_charge(&self) {
        if let Some(c) = self.charge.get() {
            c.release();
        }
    }

    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    pub fn set_failure(&self, reason: String) {
        let _ = self.failure.set(reason);
    }

    pub fn assigned_at(&self) -> u64 {
        self.assigned_at.load(Ordering::Relaxed)
    }

    pub fn set_assigned_at(&self, at: u64) {
        self.assigned_at.store(at, Ordering::Relaxed);
    }

    /// A request was proxied to it.
    pub fn touch(&self) {
        self.last_activity.store(now_unix(), Ordering::Relaxed);
        if !self.visited.load(Ordering::Relaxed) {
            self.visited.store(true, Ordering::Relaxed);
        }
    }

    /// Starts the idle clock at a handout (not a visit).
    pub fn set_last_activity(&self, at: u64) {
        self.last_activity.store(at, Ordering::Relaxed);
    }

    pub fn visited(&self) -> bool {
        self.visited.load(Ordering::Relaxed)
    }

    pub fn last_activity(&self) -> u64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    /// Keeps a kernel started in it for the first client that asks.
    pub fn set_warm_kernel(&self, kernel: WarmKernel) {
        self.warm_kernel.store(Some(Arc::new(kernel)));
    }

    /// Whether a warm kernel waits for its first client (one atomic load).
    pub fn has_warm_kernel(&self) -> bool {
        self.warm_kernel.load().is_some()
    }

    /// The warm kernel's (id, name), left in place.
    pub fn warm_kernel_ids(&self) -> Option<(String, String)> {
        self.warm_kernel
            .load()
            .as_ref()
            .map(|k| (k.id.clone(), k.name.clone()))
    }

    /// Takes the warm kernel if it is of kernel spec `name` (`None`: any).
    /// Of racing callers, at most one gets it.
    pub fn take_warm_kernel(&self, name: Option<&str>) -> Option<Arc<WarmKernel>> {
        let current = self.warm_kernel.load_full()?;
        if name.is_some_and(|n| n != current.name) {
            return None;
        }
        let previous = self
            .warm_kernel
            .compare_and_swap(&Some(current.clone()), None::<Arc<WarmKernel>>);
        match &*previous {
            Some(p) if Arc::ptr_eq(p, &current) => Some(current),
            _ => None,
        }
    }

    /// Holds kernel `kernel_id`'s channels for the first client opening them.
    pub fn hold_channels(&self, kernel_id: String, held: crate::upstream::held::Held) {
        *self.held_channels.lock().unwrap_or_else(|e| e.into_inner()) = Some((kernel_id, held));
    }

    /// Whether kernel `kernel_id`'s channels are held (and still open).
    pub fn holds_channels_of(&self, kernel_id: &str) -> bool {
        let held = self.held_channels.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .is_some_and(|(id, h)| id == kernel_id && h.is_open())
    }

    /// Takes kernel `kernel_id`'s held channels. Of racing callers, at most
    /// one gets them.
    pub fn take_held_channels(&self, kernel_id: &str) -> Option<crate::upstream::held::Held> {
        let mut held = self.held_channels.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_some_and(|(id, _)| id == kernel_id) {
            held.take().map(|(_, h)| h)
        } else {
            None
        }
    }

    /// `/user/{token}/`
    pub fn location(&self) -> String {
        let mut at = String::with_capacity(7 + self.token.len());
        at.push_str("/user/");
        at.push_str(&self.token);
        at.push('/');
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_kernel_is_taken_once_and_only_by_its_name() {
        let b = Binder::new(BindingName::parse("x").unwrap(), State::Idle);
        assert!(b.take_warm_kernel(None).is_none());
        b.set_warm_kernel(WarmKernel {
            id: "k1".into(),
            name: "python3".into(),
        });
        assert!(b.take_warm_kernel(Some("ir")).is_none(), "another name");
        assert!(b.has_warm_kernel());
        let racers: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| b.take_warm_kernel(None)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(racers.iter().filter(|k| k.is_some()).count(), 1);
        assert_eq!(racers.iter().flatten().next().unwrap().id, "k1");
        assert!(!b.has_warm_kernel());
    }

    #[test]
    fn secrets_are_128_bit_hex_and_distinct() {
        let a = random_secret();
        let b = random_secret();
        assert!(is_secret_shaped(&a), "{a}");
        assert_ne!(a, b);
        assert!(!is_secret_shaped("ABC"));
        assert!(!is_secret_shaped(&"g".repeat(32)));
    }

    #[test]
    fn only_one_racer_wins_a_transition() {
        let binder = Arc::new(Binder::new(BindingName::parse("x").unwrap(), State::Idle));
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let b = binder.clone();
                    s.spawn(move || usize::from(b.cas_state(State::Idle, State::Assigned)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
        assert_eq!(binder.state(), State::Assigned);
        assert_eq!(binder.state().public_name(), "ready");
    }
}
