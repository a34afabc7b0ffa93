//! The workers' request timers: the deadlines of the request path (the route timeout, the
//! per-try timeout, and hyper's header-read timeout through [`WorkerTimer`]) kept in one
//! table per worker thread, watched by one sweeper task that holds a single tokio timer.
//!
//! A tokio `Sleep` per request costs an entry in tokio's timer wheel: a lock, a wheel
//! insert on first poll and a removal on drop, about 500 instructions per request. Here a
//! deadline is a slot in the worker's table: taking one, arming it (storing the task's
//! waker) and giving it back touch only that thread's table. The sweeper sleeps until the
//! earliest armed deadline; almost every request ends long before its deadline and frees
//! its slot, so the sweeper wakes about once per timeout period, finds nothing due and
//! sleeps again. A sweep visits every slot, so sweeps are spaced at least one microsecond
//! per slot apart (and at least a millisecond, tokio's timer resolution): however many
//! deadlines a worker holds (idle keep-alive connections each hold their header-read
//! one), sweeping costs a bounded share of the worker. A deadline never fires early and
//! fires at most that spacing late: a millisecond up to 1,000 slots, 100 ms at 100,000.
//!
//! Each worker runs a `current_thread` runtime, so a request's futures are created, polled
//! and dropped on the thread whose table holds their slot. A [`Sleep`] made on a thread
//! without a table (outside the workers), or polled on another thread, falls back to a
//! tokio `Sleep` for the same deadline.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// One deadline in a worker's table.
#[derive(Debug)]
struct Entry {
    deadline: Instant,
    /// The waker of the task waiting on the deadline (`None` until it is first polled).
    waker: Option<Waker>,
    fired: bool,
}

/// A worker thread's deadlines.
#[derive(Debug)]
struct Table {
    /// Tells this table from another thread's (slots are only valid in their own table).
    id: u64,
    entries: Slab<Entry>,
    /// When the sweeper wakes next; `None` when it is parked (nothing armed).
    planned: Option<Instant>,
    /// The earliest time of the next sweep (the last one plus the spacing).
    not_before: Option<Instant>,
    /// Sweeps so far.
    sweeps: u64,
    /// The sweeper's waker, to wake it for a deadline before `planned`.
    sweeper: Option<Waker>,
    /// Whether a sweeper task runs (it ends with its runtime; another runtime on the same
    /// thread starts a new one).
    swept: bool,
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

static NEXT_TABLE: AtomicU64 = AtomicU64::new(1);

/// Installs this thread's deadline table and spawns its sweeper on the current runtime,
/// which must be a `current_thread` one (a worker's). Idempotent while the sweeper runs.
pub fn start() {
    let spawn = TABLE.with_borrow_mut(|table| {
        let table = table.get_or_insert_with(|| Table {
            id: NEXT_TABLE.fetch_add(1, Ordering::Relaxed),
            entries: Slab::new(),
            planned: None,
            not_before: None,
            sweeps: 0,
            sweeper: None,
            swept: false,
        });
        !std::mem::replace(&mut table.swept, true)
    });
    if spawn {
        tokio::spawn(Sweeper {
            sleep: None,
            due: Vec::new(),
        });
    }
}

/// A future that completes at `deadline`: a slot in this worker's table, or a tokio sleep
/// off the workers.
pub fn sleep_until(deadline: Instant) -> Sleep {
    let slot = TABLE
        .try_with(|table| {
            let mut table = table.try_borrow_mut().ok()?;
            let table = table.as_mut()?;
            let key = table.entries.insert(Entry {
                deadline,
                waker: None,
                fired: false,
            });
            Some((table.id, key))
        })
        .ok()
        .flatten();
    let inner = match slot {
        Some((table, key)) => Inner::Slot { table, key },
        None => Inner::Tokio(Box::pin(tokio::time::sleep_until(deadline.into()))),
    };
    Sleep { deadline, inner }
}

/// A future that completes `duration` from now (see [`sleep_until`]).
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// A deadline of the request path (see the module documentation).
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// Slot `key` of the table `table`.
    Slot { table: u64, key: usize },
    /// Off the workers.
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

/// What a table operation on a slot found.
enum Found<T> {
    /// The slot's table is this thread's.
    Here(T),
    /// This thread has another table or none: the slot cannot be reached from here.
    Elsewhere,
}

/// Runs `f` on this thread's table when it is the table `id`.
fn with_table<T>(id: u64, f: impl FnOnce(&mut Table) -> T) -> Found<T> {
    TABLE
        .try_with(|table| {
            let mut table = table.try_borrow_mut().ok()?;
            let table = table.as_mut().filter(|t| t.id == id)?;
            Some(f(table))
        })
        .ok()
        .flatten()
        .map_or(Found::Elsewhere, Found::Here)
}

impl Sleep {
    /// When it completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline (earlier or later); a completed sleep waits again.
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        match &mut self.inner {
            Inner::Slot { table, key } => {
                let (table, key) = (*table, *key);
                let found = with_table(table, |t| {
                    let entry = &mut t.entries[key];
                    entry.deadline = deadline;
                    entry.fired = false;
                    if entry.waker.is_some() {
                        t.wake_sweeper_before(deadline)
                    } else {
                        None
                    }
                });
                match found {
                    Found::Here(sweeper) => wake(sweeper),
                    Found::Elsewhere => self.fall_back(),
                }
            }
            Inner::Tokio(sleep) => sleep.as_mut().reset(deadline.into()),
        }
    }

    /// Leaves the table for a tokio sleep (polled or reset on a thread without it).
    fn fall_back(&mut self) {
        self.inner = Inner::Tokio(Box::pin(tokio::time::sleep_until(self.deadline.into())));
    }
}

/// Wakes `waker`, outside any borrow of the table.
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Table {
    /// The sweeper's waker when `deadline` moves its next wake-up earlier (which the
    /// wake-up then becomes, so that later arrivals do not wake it again); never earlier
    /// than the spacing of sweeps allows.
    fn wake_sweeper_before(&mut self, deadline: Instant) -> Option<Waker> {
        let at = self
            .not_before
            .map_or(deadline, |not_before| deadline.max(not_before));
        if self.planned.is_some_and(|planned| planned <= at) {
            return None;
        }
        self.planned = Some(at);
        self.sweeper.take()
    }

    /// The spacing of sweeps: a microsecond per slot, at least a millisecond.
    fn spacing(&self) -> Duration {
        Duration::from_micros(self.entries.len().max(1000) as u64)
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let (table, key) = match &mut this.inner {
            Inner::Slot { table, key } => (*table, *key),
            Inner::Tokio(sleep) => return sleep.as_mut().poll(cx),
        };
        let found = with_table(table, |t| {
            let entry = &mut t.entries[key];
            if entry.fired {
                return (Poll::Ready(()), None, None);
            }
            // The waker is replaced only when the task changed; the old one is dropped
            // outside the borrow.
            let old = match &entry.waker {
                Some(w) if w.will_wake(cx.waker()) => None,
                _ => entry.waker.replace(cx.waker().clone()),
            };
            let deadline = entry.deadline;
            (Poll::Pending, old, t.wake_sweeper_before(deadline))
        });
        match found {
            Found::Here((ready, old, sweeper)) => {
                drop(old);
                wake(sweeper);
                ready
            }
            Found::Elsewhere => {
                this.fall_back();
                Pin::new(this).poll(cx)
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Inner::Slot { table, key } = self.inner {
            // The entry (and its waker) is dropped outside the borrow.
            if let Found::Here(entry) = with_table(table, |t| t.entries.try_remove(key)) {
                drop(entry);
            }
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

/// hyper's timer on the workers (the header-read timeout, HTTP/2 keep-alive): deadlines in
/// the worker's table.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerTimer;

impl hyper::rt::Timer for WorkerTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(ours) => ours.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// The task that fires a worker's due deadlines and sleeps until the earliest armed one.
#[derive(Debug)]
struct Sweeper {
    /// Its one tokio timer (`None` while parked).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The wakers of due deadlines, woken after the table is released (kept for reuse).
    due: Vec<Waker>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        // Its runtime is going: the next one on this thread needs its own sweeper.
        let _ = TABLE.try_with(|table| {
            if let Ok(mut table) = table.try_borrow_mut()
                && let Some(table) = table.as_mut()
            {
                table.swept = false;
                table.sweeper = None;
                table.planned = None;
                table.not_before = None;
            }
        });
    }
}

impl Future for Sweeper {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            let now = Instant::now();
            let due = &mut this.due;
            let next = TABLE.with_borrow_mut(|table| {
                let table = table.as_mut()?;
                if !table
                    .sweeper
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    table.sweeper = Some(cx.waker().clone());
                }
                if table.not_before.is_some_and(|not_before| now < not_before) {
                    // Woken sooner than the spacing allows a sweep: wait for the planned
                    // wake-up, which is no earlier than that.
                    return table.planned;
                }
                let mut next: Option<Instant> = None;
                for (_, entry) in &mut table.entries {
                    if entry.fired {
                        continue;
                    }
                    let Some(waker) = &entry.waker else { continue };
                    if entry.deadline <= now {
                        entry.fired = true;
                        due.push(waker.clone());
                    } else if next.is_none_or(|n| entry.deadline < n) {
                        next = Some(entry.deadline);
                    }
                }
                table.sweeps += 1;
                let not_before = now + table.spacing();
                table.not_before = Some(not_before);
                table.planned = next.map(|next| next.max(not_before));
                table.planned
            });
            for waker in this.due.drain(..) {
                waker.wake();
            }
            match next {
                None => {
                    // Parked until a deadline is armed.
                    this.sleep = None;
                    return Poll::Pending;
                }
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    let sleep = match &mut this.sleep {
                        Some(sleep) => {
                            if sleep.deadline() != at {
                                sleep.as_mut().reset(at);
                            }
                            sleep
                        }
                        None => this.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls once with a waker that does nothing: whether it is still pending.
    fn pending<F: Future + Unpin + ?Sized>(f: &mut F) -> bool {
        Pin::new(f)
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    }

    fn slots() -> usize {
        TABLE.with_borrow(|t| t.as_ref().map_or(0, |t| t.entries.len()))
    }

    #[tokio::test]
    async fn a_deadline_fires_never_before_it_is_due() {
        start();
        for ms in [0, 1, 5, 20] {
            let deadline = Instant::now() + Duration::from_millis(ms);
            let sleep = sleep_until(deadline);
            assert!(matches!(sleep.inner, Inner::Slot { .. }));
            sleep.await;
            assert!(Instant::now() >= deadline, "fired early ({ms} ms)");
        }
        assert_eq!(slots(), 0, "every slot is given back");
    }

    #[tokio::test]
    async fn an_earlier_deadline_wakes_the_parked_sweeper() {
        start();
        // A far deadline is armed first: the sweeper plans to wake in an hour.
        let mut far = sleep(Duration::from_secs(3600));
        assert!(pending(&mut far));
        tokio::task::yield_now().await;
        // A near one must not wait for it.
        let near = Instant::now() + Duration::from_millis(10);
        sleep_until(near).await;
        assert!(Instant::now() >= near);
        assert!(pending(&mut far));
    }

    #[tokio::test]
    async fn a_reset_moves_the_deadline_both_ways() {
        start();
        let mut s = sleep(Duration::from_secs(3600));
        assert!(pending(&mut s));
        let sooner = Instant::now() + Duration::from_millis(5);
        s.reset(sooner);
        (&mut s).await;
        assert!(Instant::now() >= sooner);
        // Completed, then reset to later: it waits again.
        s.reset(Instant::now() + Duration::from_secs(3600));
        assert!(pending(&mut s));
        let again = Instant::now() + Duration::from_millis(2);
        s.reset(again);
        s.await;
        assert!(Instant::now() >= again);
        assert_eq!(slots(), 0);
    }

    #[tokio::test]
    async fn many_deadlines_fire_in_one_sweep_and_dropped_ones_never() {
        start();
        let deadline = Instant::now() + Duration::from_millis(10);
        let mut dropped = Vec::new();
        for _ in 0..100 {
            let mut s = sleep_until(deadline);
            assert!(pending(&mut s));
            dropped.push(s);
        }
        drop(dropped);
        assert_eq!(slots(), 0);
        let waits: Vec<_> = (0..100).map(|_| sleep_until(deadline)).collect();
        futures_util::future::join_all(waits).await;
        assert!(Instant::now() >= deadline);
        assert_eq!(slots(), 0);
    }

    #[tokio::test]
    async fn sweeps_are_spaced_by_the_number_of_slots() {
        start();
        // 20,000 slots (idle connections, say) space sweeps 20 ms apart.
        let mut idle: Vec<_> = (0..20_000)
            .map(|_| sleep(Duration::from_secs(3600)))
            .collect();
        for s in &mut idle {
            assert!(pending(s));
        }
        // Deadlines staggered over those 20 ms would each cost a sweep of every slot;
        // spaced, they fire in a couple of sweeps, none of them early.
        let start = Instant::now();
        let deadlines: Vec<_> = (0..40)
            .map(|i| start + Duration::from_micros(500 * i))
            .collect();
        let before = TABLE.with_borrow(|t| t.as_ref().unwrap().sweeps);
        let fired = futures_util::future::join_all(deadlines.iter().map(|&d| async move {
            sleep_until(d).await;
            Instant::now() >= d
        }))
        .await;
        assert!(fired.iter().all(|&on_time| on_time), "none fires early");
        let sweeps = TABLE.with_borrow(|t| t.as_ref().unwrap().sweeps) - before;
        assert!(
            sweeps <= 3,
            "{sweeps} sweeps of 20,000 slots for 40 deadlines"
        );
        for s in &mut idle {
            assert!(pending(s), "far deadlines stay pending");
        }
    }

    #[test]
    fn off_the_workers_it_is_a_tokio_sleep() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_millis(5);
            let s = tokio::spawn(async move {
                let s = sleep_until(deadline);
                let tokio = matches!(s.inner, Inner::Tokio(_));
                s.await;
                tokio
            });
            assert!(s.await.unwrap(), "no table on this thread");
            assert!(Instant::now() >= deadline);
        });
    }

    #[tokio::test]
    async fn hyper_resets_our_sleep_in_place() {
        use hyper::rt::Timer;
        start();
        let timer = WorkerTimer;
        let mut s = timer.sleep(Duration::from_secs(3600));
        assert!(pending(&mut s));
        let soon = Instant::now() + Duration::from_millis(3);
        timer.reset(&mut s, soon);
        assert!(s.as_mut().downcast_mut_pin::<Sleep>().is_some());
        s.await;
        assert!(Instant::now() >= soon);
    }
}
