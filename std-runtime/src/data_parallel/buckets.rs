//! Gradient buckets: the all-reduce overlapped with the backward, as PyTorch's
//! `DistributedDataParallel` does it.
//!
//! The parameters' gradients are grouped into buckets in reverse creation order (the order in
//! which a backward finishes them: the last layer's first), each of about `floats` elements.
//! During a replica's backward ([`mote::Tape::backward_with`]), a [`Tracker`] counts the
//! parameters each bucket still waits for; once a bucket's gradients are all final, the
//! replica hands it to the all-reduce at once, while its backward goes on with the layers
//! below. [`Buckets`] is the plan (the same on every replica and every rank, each of which
//! builds it from its own tape: backends that align allocations differently place the
//! gradients at other offsets);
//! [`Staged`] is the all-reduce of CPU replicas in shared memory. On GPUs the NCCL reducer
//! sends each bucket as it comes (`NcclReduce`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use mote::{Backend, Error, HostBackend, Result, Tape, Var};

/// Default bucket size in floats (1 MiB of gradients); the first bucket (the last layers) is
/// capped at a quarter of it, so that the first all-reduce starts early, as PyTorch's does.
pub const BUCKET_FLOATS: usize = 1 << 18;

/// Which gradient regions make up each bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buckets {
    /// Gradient regions (arena offset, length), in parameter order (increasing offsets).
    regions: Vec<(usize, usize)>,
    /// The bucket of each region.
    bucket_of: Vec<usize>,
    /// The regions of each bucket: a range of `regions` (buckets run from the last regions).
    members: Vec<std::ops::Range<usize>>,
}

impl Buckets {
    /// Buckets of about `floats` elements over gradient `regions` (in parameter order, as
    /// [`super::gradient_regions`] gives them). A region larger than a bucket gets a bucket of
    /// its own; there is at least one bucket when there is a region.
    ///
    /// # Errors
    /// [`Error::Aliasing`] for regions not in increasing, disjoint order;
    /// [`Error::InvalidArgument`] for regions whose ends or total length overflow.
    pub fn new(regions: Vec<(usize, usize)>, floats: usize) -> Result<Buckets> {
        let ends: Option<Vec<usize>> = regions.iter().map(|r| r.0.checked_add(r.1)).collect();
        let total = regions.iter().try_fold(0usize, |a, r| a.checked_add(r.1));
        let (Some(ends), Some(_)) = (ends, total) else {
            return Err(Error::InvalidArgument {
                what: "data parallel: gradient regions that overflow",
            });
        };
        if ends
            .iter()
            .zip(regions.iter().skip(1))
            .any(|(&end, next)| end > next.0)
        {
            return Err(Error::Aliasing);
        }
        let floats = floats.max(1);
        let mut members = Vec::new();
        let mut bucket_of = vec![0; regions.len()];
        let mut hi = regions.len();
        while hi > 0 {
            let cap = if members.is_empty() {
                (floats / 4).max(1)
            } else {
                floats
            };
            let mut lo = hi - 1;
            let mut size = regions[lo].1;
            while lo > 0 && size + regions[lo - 1].1 <= cap {
                lo -= 1;
                size += regions[lo].1;
            }
            for b in &mut bucket_of[lo..hi] {
                *b = members.len();
            }
            members.push(lo..hi);
            hi = lo;
        }
        Ok(Buckets {
            regions,
            bucket_of,
            members,
        })
    }

    /// Buckets over `tape`'s gradient regions.
    ///
    /// # Errors
    /// A stale handle (should not happen).
    pub fn of<B: Backend, const N: usize>(tape: &Tape<B, N>, floats: usize) -> Result<Buckets> {
        Buckets::new(super::gradient_regions(tape)?, floats)
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when there is no gradient at all.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The gradient regions of bucket `b` (arena offset, length).
    pub fn regions(&self, b: usize) -> &[(usize, usize)] {
        self.members
            .get(b)
            .and_then(|r| self.regions.get(r.clone()))
            .unwrap_or(&[])
    }

    /// Elements in bucket `b`.
    pub fn floats(&self, b: usize) -> usize {
        self.regions(b).iter().map(|r| r.1).sum()
    }

    /// A fresh count of what each bucket waits for, for one replica's backward.
    pub fn tracker(&self) -> Tracker {
        Tracker {
            left: self.members.iter().map(ExactSizeIterator::len).collect(),
            next: 0,
        }
    }

    /// The bucket of the gradient region at arena offset `offset`.
    fn bucket_at(&self, offset: usize) -> Option<usize> {
        let i = self.regions.binary_search_by_key(&offset, |r| r.0).ok()?;
        self.bucket_of.get(i).copied()
    }
}

/// What one replica's buckets still wait for during its backward. Buckets are handed on in
/// their order (0 first), as PyTorch's are: every rank then issues the same collectives in the
/// same order, which NCCL needs, whatever order a backward finishes them in.
#[derive(Clone, Debug)]
pub struct Tracker {
    /// Parameters not yet final, per bucket.
    left: Vec<usize>,
    /// The first bucket not handed on yet.
    next: usize,
}

impl Tracker {
    /// Parameter `p` of `tape` is final (from [`Tape::backward_with`]): the buckets to hand on
    /// now (complete, and every bucket before them handed on), in order; often none.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a parameter that is in no bucket (a tape that does not
    /// match the plan) or reported twice; a stale handle.
    pub fn ready<B: Backend, const N: usize>(
        &mut self,
        plan: &Buckets,
        tape: &Tape<B, N>,
        p: Var,
    ) -> Result<std::ops::Range<usize>> {
        let mismatch = Error::InvalidArgument {
            what: "data parallel: a gradient outside the replicas' bucket plan",
        };
        let offset = tape.grad(p)?.ok_or(mismatch)?.offset;
        let b = plan.bucket_at(offset).ok_or(mismatch)?;
        let left = self.left.get_mut(b).ok_or(mismatch)?;
        if *left == 0 {
            return Err(mismatch);
        }
        *left -= 1;
        let from = self.next;
        while self.left.get(self.next) == Some(&0) {
            self.next += 1;
        }
        Ok(from..self.next)
    }

    /// The buckets not handed on yet, in order (after a backward that did not finish them
    /// all: a replica without rows, whose gradients are zero); marks them handed on.
    pub fn rest(&mut self) -> std::ops::Range<usize> {
        let from = self.next;
        self.next = self.left.len();
        for l in &mut self.left {
            *l = 0;
        }
        from..self.next
    }
}

/// The all-reduce of CPU replicas, bucket by bucket, in shared memory. Each replica copies a
/// finished bucket, scaled by its weight, into its own slot; the replica that completes a bucket
/// last sums the slots (in replica order: the same arithmetic as the all-reduce after the
/// backward, bit for bit) into the bucket's result. After the backward every replica copies the
/// results into its gradients ([`Staged::scatter`]). No replica ever waits for another inside
/// the backward (the replicas may share fewer threads than there are replicas).
#[derive(Debug)]
pub struct Staged {
    plan: Buckets,
    replicas: usize,
    /// Slot of bucket `b`, replica `r`: `slots[b * replicas + r]`.
    slots: Vec<Mutex<Vec<f32>>>,
    sums: Vec<Mutex<Vec<f32>>>,
    /// Replicas that staged each bucket this step.
    arrived: Vec<AtomicUsize>,
    /// Whether replica `r` staged bucket `b` this step: `staged[b * replicas + r]`.
    staged: Vec<AtomicBool>,
    weights: Vec<f32>,
}

fn poisoned<T>(_: T) -> Error {
    Error::InvalidArgument {
        what: "data parallel: a replica's thread panicked during the all-reduce",
    }
}

impl Staged {
    /// The all-reduce of `replicas` replicas over the buckets of `plan`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no replicas, or staging memory (`replicas + 1` copies of
    /// the gradients) that cannot be had.
    pub fn new(plan: Buckets, replicas: usize) -> Result<Staged> {
        if replicas == 0 {
            return Err(Error::InvalidArgument {
                what: "data parallel: an all-reduce needs at least one replica",
            });
        }
        let n = plan.len();
        let too_big = Error::InvalidArgument {
            what: "data parallel: the all-reduce's staging memory is too large",
        };
        // One slot per bucket and replica, and the sums: `replicas + 1` copies of the gradients.
        let total = plan.regions.iter().map(|r| r.1).sum::<usize>();
        let copies = replicas.checked_add(1).and_then(|c| total.checked_mul(c));
        if n.checked_mul(replicas).is_none() || copies.is_none_or(|t| t > isize::MAX as usize / 4) {
            return Err(too_big);
        }
        let zeros = |len: usize| -> Result<Mutex<Vec<f32>>> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).map_err(|_| too_big)?;
            v.resize(len, 0.0);
            Ok(Mutex::new(v))
        };
        Ok(Staged {
            slots: (0..n * replicas)
                .map(|i| zeros(plan.floats(i / replicas)))
                .collect::<Result<_>>()?,
            sums: (0..n)
                .map(|b| zeros(plan.floats(b)))
                .collect::<Result<_>>()?,
            arrived: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            staged: (0..n * replicas).map(|_| AtomicBool::new(false)).collect(),
            weights: vec![0.0; replicas],
            replicas,
            plan,
        })
    }

    /// The bucket plan.
    pub fn plan(&self) -> &Buckets {
        &self.plan
    }

    /// Starts a step: replica `r`'s gradients count `weights[r]` in the sum.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] for a weight count other than the replicas'.
    pub fn begin(&mut self, weights: &[f32]) -> Result<()> {
        if weights.len() != self.replicas {
            return Err(Error::LengthMismatch {
                op: "data parallel weights",
                expected: self.replicas,
                got: weights.len(),
            });
        }
        self.weights.copy_from_slice(weights);
        for a in &mut self.arrived {
            *a.get_mut() = 0;
        }
        for s in &mut self.staged {
            *s.get_mut() = false;
        }
        Ok(())
    }

    /// Replica `r` finished bucket `b` on `tape`: stages it, and sums the bucket when `r` is
    /// the last replica to finish it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a replica or bucket out of range, or a bucket that this
    /// replica already staged this step; a stale handle.
    pub fn arrive<B: HostBackend<Elem = f32>, const N: usize>(
        &self,
        r: usize,
        b: usize,
        tape: &Tape<B, N>,
    ) -> Result<()> {
        let bad = Error::InvalidArgument {
            what: "data parallel: replica or bucket out of range",
        };
        if r >= self.replicas || b >= self.plan.len() {
            return Err(bad);
        }
        let w = *self.weights.get(r).ok_or(bad)?;
        let once = self.staged.get(b * self.replicas + r).ok_or(bad)?;
        if once.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidArgument {
                what: "data parallel: a replica staged a bucket twice in one step",
            });
        }
        {
            let mut slot = self
                .slots
                .get(b * self.replicas + r)
                .ok_or(bad)?
                .lock()
                .map_err(poisoned)?;
            let mut at = 0;
            let storage = tape.backend().storage();
            for &(offset, len) in self.plan.regions(b) {
                let g = storage.get(offset..offset + len).ok_or(bad)?;
                let dst = slot.get_mut(at..at + len).ok_or(bad)?;
                for (d, &x) in dst.iter_mut().zip(g) {
                    *d = w * x;
                }
                at += len;
            }
        }
        let arrived = self.arrived.get(b).ok_or(bad)?;
        // AcqRel: the last to arrive sees every other replica's slot written.
        let n = arrived.fetch_add(1, Ordering::AcqRel) + 1;
        if n > self.replicas {
            return Err(bad);
        }
        if n == self.replicas {
            self.sum(b)?;
        }
        Ok(())
    }

    /// Sums bucket `b`'s slots, in replica order, into its result.
    fn sum(&self, b: usize) -> Result<()> {
        let mut sum = self
            .sums
            .get(b)
            .ok_or(Error::StaleHandle)?
            .lock()
            .map_err(poisoned)?;
        sum.fill(0.0);
        for r in 0..self.replicas {
            let slot = self
                .slots
                .get(b * self.replicas + r)
                .ok_or(Error::StaleHandle)?
                .lock()
                .map_err(poisoned)?;
            for (s, &x) in sum.iter_mut().zip(slot.iter()) {
                *s += x;
            }
        }
        Ok(())
    }

    /// Replica `r`'s backward ended: stages the buckets its tracker did not hand on (all of
    /// them for a replica without rows, whose gradients are zero).
    ///
    /// # Errors
    /// As [`Staged::arrive`].
    pub fn finish<B: HostBackend<Elem = f32>, const N: usize>(
        &self,
        r: usize,
        tracker: &mut Tracker,
        tape: &Tape<B, N>,
    ) -> Result<()> {
        for b in tracker.rest() {
            self.arrive(r, b, tape)?;
        }
        Ok(())
    }

    /// Copies the summed buckets into `tape`'s gradients (every replica gets the same).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when some replica did not stage every bucket this step.
    pub fn scatter<B: HostBackend<Elem = f32>, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
    ) -> Result<()> {
        let missing = Error::InvalidArgument {
            what: "data parallel: a replica did not finish its backward",
        };
        let storage = tape.backend_mut().storage_mut();
        for b in 0..self.plan.len() {
            if self.arrived.get(b).map(|a| a.load(Ordering::Acquire)) != Some(self.replicas) {
                return Err(missing);
            }
            let sum = self.sums.get(b).ok_or(missing)?.lock().map_err(poisoned)?;
            let mut at = 0;
            for &(offset, len) in self.plan.regions(b) {
                let dst = storage.get_mut(offset..offset + len).ok_or(missing)?;
                dst.copy_from_slice(sum.get(at..at + len).ok_or(missing)?);
                at += len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_run_from_the_last_regions_and_respect_the_cap() {
        // Sizes 5, 3, 9, 2, 2 at increasing offsets; cap 8 (first bucket 2).
        let regions = vec![(0, 5), (10, 3), (20, 9), (40, 2), (50, 2)];
        let b = Buckets::new(regions, 8).unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b.regions(0), &[(50, 2)]);
        assert_eq!(b.regions(1), &[(40, 2)]);
        // 9 is over the cap: a bucket of its own.
        assert_eq!(b.regions(2), &[(20, 9)]);
        assert_eq!(b.regions(3), &[(0, 5), (10, 3)]);
        assert_eq!(b.floats(3), 8);
        assert_eq!(b.bucket_at(10), Some(3));
        assert_eq!(b.bucket_at(11), None);
        assert!(b.regions(4).is_empty());
        assert_eq!(b.tracker().left, vec![1, 1, 1, 2]);
    }

    #[test]
    fn trackers_hand_buckets_on_in_order() {
        let mut mem = vec![0.0f32; 64];
        let mut t = Tape::<mote::Cpu<f32>, 8>::new(&mut mem);
        let ps: Vec<Var> = (0..3).map(|_| t.param(&[4], &[1.0; 4]).unwrap()).collect();
        let plan = Buckets::of(&t, 4).unwrap();
        let mut tr = plan.tracker();
        // Bucket 1 (the middle parameter) first: held back until bucket 0 is done.
        assert_eq!(plan.len(), 3);
        assert!(tr.ready(&plan, &t, ps[1]).unwrap().is_empty());
        assert_eq!(tr.ready(&plan, &t, ps[2]).unwrap(), 0..2);
        assert!(tr.ready(&plan, &t, ps[2]).is_err(), "twice");
        assert_eq!(tr.rest(), 2..3);
        assert_eq!(tr.rest(), 3..3);
    }

    #[test]
    fn staging_sums_in_replica_order_and_refuses_a_bucket_staged_twice() {
        let mut mems = [vec![0.0f32; 64], vec![0.0f32; 64]];
        let mut tapes: Vec<Tape<mote::Cpu<f32>, 8>> =
            mems.iter_mut().map(|m| Tape::new(m)).collect();
        for (k, t) in tapes.iter_mut().enumerate() {
            let p = t.param(&[4], &[0.0; 4]).unwrap();
            let g = t.grad(p).unwrap().unwrap();
            let v = [1.0, 2.0, 3.0, 4.0].map(|x: f32| x * (k + 1) as f32);
            t.backend_mut().storage_mut()[g.offset..g.offset + 4].copy_from_slice(&v);
        }
        let plan = Buckets::of(&tapes[0], 16).unwrap();
        assert!(Staged::new(plan.clone(), 0).is_err());
        let mut st = Staged::new(plan, 2).unwrap();
        st.begin(&[0.5, 0.25]).unwrap();
        st.arrive(0, 0, &tapes[0]).unwrap();
        assert!(st.arrive(0, 0, &tapes[0]).is_err(), "twice");
        // Not every replica staged: no scatter.
        assert!(st.scatter(&mut tapes[1]).is_err());
        st.arrive(1, 0, &tapes[1]).unwrap();
        for t in &mut tapes {
            st.scatter(t).unwrap();
            let p = t.params().next().unwrap();
            // 0.5 x g + 0.25 x 2g = g.
            assert_eq!(t.grad_data(p).unwrap().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
        }
        // A new step starts clean.
        st.begin(&[1.0, 0.0]).unwrap();
        st.arrive(1, 0, &tapes[1]).unwrap();
        assert!(st.arrive(2, 0, &tapes[1]).is_err(), "no replica 2");
        assert!(st.begin(&[1.0]).is_err(), "one weight per replica");
    }

    #[test]
    fn overlapping_regions_are_refused() {
        assert_eq!(Buckets::new(vec![(0, 5), (4, 2)], 8), Err(Error::Aliasing));
        assert!(Buckets::new(vec![], 8).unwrap().is_empty());
        // Ends or totals past usize: errors, not panics.
        assert!(Buckets::new(vec![(usize::MAX - 1, 4)], 16).is_err());
        assert!(Buckets::new(vec![(0, 1), (1, usize::MAX)], 8).is_err());
        let half = usize::MAX / 2 + 1;
        assert!(Buckets::new(vec![(0, half), (half, half - 1)], 8).is_ok());
        assert!(Buckets::new(vec![(0, half), (half, half)], 8).is_err());
        // Staging memory that cannot be had: errors, not aborts.
        let huge = Buckets::new(vec![(0, usize::MAX / 8)], 8).unwrap();
        assert!(Staged::new(huge.clone(), 2).is_err());
        assert!(Staged::new(huge, usize::MAX).is_err());
        // A bucket out of range.
        let mut mem = vec![0.0f32; 16];
        let mut t = Tape::<mote::Cpu<f32>, 4>::new(&mut mem);
        t.param(&[2], &[1.0, 2.0]).unwrap();
        let mut st = Staged::new(Buckets::of(&t, 8).unwrap(), 2).unwrap();
        st.begin(&[0.5, 0.5]).unwrap();
        assert!(st.arrive(0, usize::MAX, &t).is_err());
        assert!(st.arrive(1, 1, &t).is_err());
    }
}
