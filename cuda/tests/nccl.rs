//! NCCL on the GPU machine (one GPU: world size 1): a local communicator and a rank of a
//! one-rank group, each summing arena regions in place (a sum over one rank leaves them as
//! they were) on the backend's stream, and a broadcast of host numbers; refusals of bad
//! arguments. Without a CUDA driver: on the emulated device (one-rank NCCL there too), or one
//! skip line with `MOTE_EMULATE=0`.

mod common;

use mote::Backend;
use mote_cuda::nccl::{Nccl, ID_BYTES};
use mote_cuda::CudaError;

#[test]
fn one_rank_all_reduce_keeps_the_values() {
    let Some(mut cuda) = common::gpu("one_rank_all_reduce_keeps_the_values", 1 << 12) else {
        return;
    };
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
    cuda.write(100, &data).unwrap();
    let local = Nccl::local(&[&cuda]).expect("ncclCommInitAll on one GPU (is libnccl.so found?)");
    assert_eq!((local.world(), local.ranks()), (1, &[0usize][..]));
    local
        .all_reduce_sum(&mut [&mut cuda], &[(100, 600), (700, 400)])
        .unwrap();
    let mut back = vec![0f32; 1000];
    cuda.read(100, &mut back).unwrap();
    assert_eq!(back, data, "a one-rank sum changes nothing");

    let id: [u8; ID_BYTES] = Nccl::unique_id().unwrap();
    let ranked = Nccl::rank(&cuda, 0, 1, &id).expect("ncclCommInitRank, world size 1");
    ranked
        .all_reduce_sum(&mut [&mut cuda], &[(100, 1000)])
        .unwrap();
    cuda.read(100, &mut back).unwrap();
    assert_eq!(back, data);

    // Refusals: a region past the arena, a backend count that does not match, a bad rank.
    let end = cuda.capacity();
    let past = ranked.all_reduce_sum(&mut [&mut cuda], &[(end - 100, 200)]);
    assert!(matches!(past, Err(CudaError::Mote(_))), "{past:?}");
    let none = ranked.all_reduce_sum(&mut [], &[(0, 1)]);
    assert!(matches!(none, Err(CudaError::Mote(_))), "{none:?}");
    let bad = Nccl::rank(&cuda, 1, 1, &id);
    assert!(matches!(bad, Err(CudaError::Mote(_))), "{bad:?}");
}

/// The overlapped all-reduce of one rank (`Nccl::into_ranks`), on a thread of its own as
/// data-parallel training runs one per GPU: the calls (stream fork, join, NCCL on the second
/// stream) run and a one-rank sum keeps the values. With one rank an in-place sum changes
/// nothing, so this cannot show that the streams are ordered: that needs two GPUs.
#[test]
fn one_rank_overlapped_all_reduce_keeps_the_values() {
    let Some(mut cuda) = common::gpu("one_rank_overlapped_all_reduce_keeps_the_values", 1 << 12)
    else {
        return;
    };
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 3.0).collect();
    cuda.write(100, &data).unwrap();
    cuda.write(2000, &data).unwrap();
    let local = Nccl::local(&[&cuda]).expect("ncclCommInitAll on one GPU");
    let mut ranks = local.into_ranks();
    assert_eq!(ranks.len(), 1);
    let mut rank = ranks.pop().unwrap();
    assert_eq!((rank.rank(), rank.world()), (0, 1));
    let (back, rank) = std::thread::spawn(move || {
        cuda.make_current().unwrap();
        // Scale on the backend's stream first: the all-reduce must see it.
        cuda.scale(100, 1000, 2.0).unwrap();
        rank.all_reduce_sum_async(&mut cuda, &[(100, 600), (700, 400)])
            .unwrap();
        // Work elsewhere while the bucket is summed.
        cuda.scale(2000, 1000, 3.0).unwrap();
        rank.wait(&cuda).unwrap();
        let mut a = vec![0f32; 1000];
        let mut b = vec![0f32; 1000];
        cuda.read(100, &mut a).unwrap();
        cuda.read(2000, &mut b).unwrap();
        let end = cuda.capacity();
        let past = rank.all_reduce_sum_async(&mut cuda, &[(end - 100, 200)]);
        assert!(matches!(past, Err(CudaError::Mote(_))), "{past:?}");
        ((a, b), rank)
    })
    .join()
    .unwrap();
    let twice: Vec<f32> = data.iter().map(|x| x * 2.0).collect();
    assert_eq!(back.0, twice, "a one-rank sum changes nothing");
    let thrice: Vec<f32> = data.iter().map(|x| x * 3.0).collect();
    assert_eq!(back.1, thrice);
    drop(rank);

    // A rank of a one-rank group made with ncclCommInitRank works the same way.
    let Some(mut cuda) = common::gpu("one_rank_overlapped_all_reduce_keeps_the_values", 1 << 12)
    else {
        return;
    };
    cuda.write(100, &data).unwrap();
    let id: [u8; ID_BYTES] = Nccl::unique_id().unwrap();
    let ranked = Nccl::rank(&cuda, 0, 1, &id).expect("ncclCommInitRank, world size 1");
    let mut rank = ranked.into_ranks().pop().unwrap();
    rank.all_reduce_sum_async(&mut cuda, &[(100, 1000)])
        .unwrap();
    rank.wait(&cuda).unwrap();
    let mut a = vec![0f32; 1000];
    cuda.read(100, &mut a).unwrap();
    assert_eq!(a, data);

    // Rank 0's numbers to every rank (one here: they stay), as the epochs' metrics go.
    let mut numbers = [0.25, -3.5, f64::NAN, 1e300];
    rank.broadcast_from_first(&mut numbers).unwrap();
    assert_eq!(numbers[..2], [0.25, -3.5]);
    assert!(numbers[2].is_nan());
    assert_eq!(numbers[3], 1e300);
    rank.broadcast_from_first(&mut []).unwrap();
    // The maximum over the ranks (one here: the values themselves), as the start check goes.
    let mut flags = [0.0, 1.0, -2.5];
    rank.max_over_ranks(&mut flags).unwrap();
    assert_eq!(flags, [0.0, 1.0, -2.5]);
    rank.max_over_ranks(&mut []).unwrap();
    // The rank's device buffer for these grows for more values, and serves fewer after.
    let mut many: Vec<f64> = (0..300).map(|i| f64::from(i) * 0.5 - 20.0).collect();
    let want = many.clone();
    rank.max_over_ranks(&mut many).unwrap();
    assert_eq!(many, want);
    let mut one = [7.0];
    rank.broadcast_from_first(&mut one).unwrap();
    assert_eq!(one, [7.0]);
}
