//! Multi-process launch: how the processes of one training run find each other, as `torchrun`
//! does. Each process is one rank of the run and reads its place from the environment:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `MOTE_WORLD_SIZE` | processes (ranks) in the run, on every host together |
//! | `MOTE_RANK` | this process's rank, `0 .. MOTE_WORLD_SIZE` |
//! | `MOTE_LOCAL_RANK` | which GPU of its host this process uses (default: `MOTE_RANK`) |
//! | `MOTE_RENDEZVOUS` | where rank 0 hands its NCCL id to the others: `file:PATH` (a file every host sees, e.g. on a shared disk; without `MOTE_RUN_ID`, one older than a minute before a rank started is not read: see [`STALE_AFTER`]) or `tcp:HOST:PORT` (rank 0 listens there, the others connect) |
//! | `MOTE_RUN_ID` | optional, the same on every rank and new for every run (as `torchrun --rdzv-id`): rank 0 hands its id only to ranks of this run, and a rendezvous file is read only when written for this run, whatever its age |
//! | `MOTE_TIMEOUT` | seconds a rank may go without finishing a training step before its [`Watchdog`] aborts it (default 600; `0` or `off`: never) |
//!
//! Over TCP, rank 0 listens on every interface of its host at that port (the host name tells
//! the others where to connect). Ranks wait for each other at the rendezvous for at most
//! [`RENDEZVOUS_TIMEOUT`].
//!
//! Rank 0 makes the group's id ([`mote_cuda::Nccl::unique_id`] with the `cuda` feature) and
//! [`exchange`] hands it over; every rank then joins NCCL with it. Nothing else crosses hosts
//! outside NCCL: every rank reads the same data, shuffles it with the same seed and trains on its
//! shard of each batch.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::{Error, Result};

/// Bytes handed from rank 0 to every other rank (an NCCL unique id).
pub const ID_BYTES: usize = 128;

/// Where the ranks meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rendezvous {
    /// A file every rank can read: rank 0 writes it (atomically), the others wait for it.
    File(PathBuf),
    /// Rank 0 listens on this address; the others connect.
    Tcp(String),
}

impl Rendezvous {
    /// Parses `file:PATH` or `tcp:HOST:PORT`.
    ///
    /// # Errors
    /// `Invalid` for anything else.
    pub fn parse(s: &str) -> Result<Rendezvous> {
        if let Some(p) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(Rendezvous::File(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:").filter(|a| a.contains(':')) {
            Ok(Rendezvous::Tcp(a.to_string()))
        } else {
            Err(Error::invalid(format!(
                "MOTE_RENDEZVOUS={s}: not file:PATH or tcp:HOST:PORT"
            ))
            .with_hint("for example MOTE_RENDEZVOUS=tcp:10.0.0.1:29500 (rank 0's host)"))
        }
    }
}

/// This process's place in a multi-process run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Ranks in the run.
    pub world: usize,
    /// This process's rank.
    pub rank: usize,
    /// Its GPU on its host.
    pub local_rank: usize,
    /// Where the ranks meet.
    pub rendezvous: Rendezvous,
    /// The run's name (`MOTE_RUN_ID`), which the rendezvous checks; `None`: not checked (a
    /// file is then told to be this run's by its age).
    pub run_id: Option<String>,
    /// When this process started (read its launch): a rendezvous file without a run id is
    /// this run's when written at most [`STALE_AFTER`] before it, however long this rank then
    /// took to load its data.
    pub started: SystemTime,
}

impl Launch {
    /// Reads the launch from `var` (the environment: `std::env::var`); `None` when
    /// `MOTE_WORLD_SIZE` is unset (a single-process run).
    ///
    /// # Errors
    /// `Invalid` naming the variable that is missing or malformed.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let Some(world) = var("MOTE_WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &str, v: &str| -> Result<usize> {
            v.trim().parse().map_err(|_| {
                Error::invalid(format!("{name}={v}: not a number"))
                    .with_hint("see the multi-process launch in README.md")
            })
        };
        let world = number("MOTE_WORLD_SIZE", &world)?;
        let rank = var("MOTE_RANK").ok_or_else(|| {
            Error::invalid("MOTE_WORLD_SIZE is set but MOTE_RANK is not")
                .with_hint("give every process its rank, 0 to MOTE_WORLD_SIZE - 1")
        })?;
        let rank = number("MOTE_RANK", &rank)?;
        // NCCL counts ranks in an `int`.
        if world > i32::MAX as usize {
            return Err(Error::invalid(format!(
                "MOTE_WORLD_SIZE={world}: at most {} processes",
                i32::MAX
            )));
        }
        if world == 0 || rank >= world {
            return Err(Error::invalid(format!(
                "MOTE_RANK={rank} with MOTE_WORLD_SIZE={world}: the rank must be below the size"
            )));
        }
        let local_rank = match var("MOTE_LOCAL_RANK") {
            Some(v) => number("MOTE_LOCAL_RANK", &v)?,
            None => rank,
        };
        let rendezvous = var("MOTE_RENDEZVOUS").ok_or_else(|| {
            Error::invalid("MOTE_WORLD_SIZE is set but MOTE_RENDEZVOUS is not")
                .with_hint("MOTE_RENDEZVOUS=file:/shared/run1.id or tcp:HOST:PORT of rank 0")
        })?;
        let run_id = var("MOTE_RUN_ID").filter(|v| !v.is_empty());
        if let Some(id) = &run_id {
            if id.len() > MAX_RUN_ID || id.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "MOTE_RUN_ID={id:?}: a run id is at most {MAX_RUN_ID} bytes, without \
                     control characters"
                ))
                .with_hint("for example MOTE_RUN_ID=$(date +%s)-train, the same on every rank"));
            }
        }
        Ok(Some(Launch {
            world,
            rank,
            local_rank,
            rendezvous: Rendezvous::parse(&rendezvous)?,
            run_id,
            started: SystemTime::now(),
        }))
    }
}

/// Hands rank 0's `id` (made by `make_id`, on rank 0 only) to every rank of `launch`; returns
/// the id every rank then uses. Waits at most `timeout` for the others.
///
/// # Errors
/// `Invalid` when the rendezvous cannot be reached in time, or on an I/O error.
pub fn exchange(
    launch: &Launch,
    timeout: Duration,
    make_id: impl FnOnce() -> Result<[u8; ID_BYTES]>,
) -> Result<[u8; ID_BYTES]> {
    match (&launch.rendezvous, launch.rank) {
        (Rendezvous::File(path), 0) => {
            let id = make_id()?;
            let tag = launch.run_id.as_deref().unwrap_or("").as_bytes();
            crate::checkpoint::write_atomic(path, &[&id[..], tag].concat())?;
            Ok(id)
        }
        (Rendezvous::File(path), _) => wait_for_file(path, launch, timeout),
        (Rendezvous::Tcp(addr), 0) => {
            let id = make_id()?;
            serve(addr, launch.world - 1, &id, run_tag(launch), timeout)?;
            Ok(id)
        }
        (Rendezvous::Tcp(addr), rank) => fetch(addr, rank, run_tag(launch), timeout),
    }
}

/// Rank 0's rendezvous file, removed when this is dropped: once every rank has joined (the id
/// is spent), and also when rank 0 fails before that, so that a rerun, with the same run id
/// too, does not find a dead run's id. (A rank 0 that aborts leaves it: give each run a new
/// run id.)
#[derive(Debug)]
pub struct SpentFile(Option<PathBuf>);

impl SpentFile {
    /// The file of `launch` when this process is its rank 0 and the rendezvous is a file;
    /// nothing otherwise.
    pub fn of(launch: &Launch) -> SpentFile {
        SpentFile(match (&launch.rendezvous, launch.rank) {
            (Rendezvous::File(p), 0) => Some(p.clone()),
            _ => None,
        })
    }
}

impl Drop for SpentFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Checks that every rank of a run starts alike: `items` are this rank's numbers for what must
/// be the same on every rank (the data's checksum, the checkpoint's, the settings'...), named.
/// `broadcast` replaces numbers by rank 0's, `max` by their maximum over the ranks (NCCL's
/// broadcast and all-reduce: every rank calls both, with as many numbers). A rank whose
/// numbers differ from rank 0's fails naming what differs, and every other rank fails with it
/// (so that none trains on, waiting for a peer that stopped).
///
/// # Errors
/// `Invalid` when some rank differs; the collectives' errors.
pub fn check_same_start(
    launch: &Launch,
    items: &[(&str, f64)],
    broadcast: impl FnOnce(&mut [f64]) -> Result<()>,
    max: impl FnOnce(&mut [f64]) -> Result<()>,
) -> Result<()> {
    let mut first: Vec<f64> = items.iter().map(|&(_, v)| v).collect();
    broadcast(&mut first)?;
    let differ: Vec<&str> = items
        .iter()
        .zip(&first)
        .filter(|((_, v), f)| v.to_bits() != f.to_bits())
        .map(|(&(name, _), _)| name)
        .collect();
    let mut any = [if differ.is_empty() { 0.0 } else { 1.0 }];
    max(&mut any)?;
    let hint = "start every rank with the same data, the same --resume checkpoint and the same \
                flags (and the same mote build)";
    if !differ.is_empty() {
        Err(Error::invalid(format!(
            "rank {} of {}: its {} differ from rank 0's",
            launch.rank,
            launch.world,
            differ.join(", ")
        ))
        .with_hint(hint))
    } else if any[0] != 0.0 {
        Err(Error::invalid(format!(
            "rank {} of {}: another rank does not start as rank 0 does (its own error says \
             how)",
            launch.rank, launch.world
        ))
        .with_hint(hint))
    } else {
        Ok(())
    }
}

/// How long the command-line program's ranks wait for each other at the rendezvous.
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest `MOTE_RUN_ID`.
pub const MAX_RUN_ID: usize = 256;

/// The version of the TCP exchange (the hello, the id, the acknowledgement), in every tag: ranks
/// of builds that exchange otherwise refuse each other rather than half-join.
const PROTOCOL: u64 = 2;

/// What a rank sends rank 0 after its rank over TCP: a 64-bit FNV-1a hash of the run id (0
/// without one) with [`PROTOCOL`] in its top byte, so that rank 0 serves only the ranks of its
/// own run and of its own exchange.
fn run_tag(launch: &Launch) -> u64 {
    let id = launch.run_id.as_deref().map_or(0, |id| {
        id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    });
    id ^ (PROTOCOL << 56)
}

fn late(what: String) -> Error {
    Error::invalid(what).with_hint(
        "start every rank with the same MOTE_WORLD_SIZE, MOTE_RENDEZVOUS and MOTE_RUN_ID, rank 0 \
         included",
    )
}

/// How much older than a waiting rank's start a rendezvous file may be and still be this run's:
/// rank 0 writes it at its own start, which may come before the others' (and hosts' clocks
/// differ a little). A file older than that is left by a run that died before every rank
/// joined (rank 0 deletes it once they have), and is not read.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Ranks 1..: waits for rank 0's file and reads its id. With a run id, the file must have been
/// written for that run (the id follows rank 0's bytes), whatever its age; without, it must
/// hold nothing more and be no older than [`STALE_AFTER`] before this rank started
/// ([`Launch::started`]).
fn wait_for_file(path: &Path, launch: &Launch, timeout: Duration) -> Result<[u8; ID_BYTES]> {
    let run_id = launch.run_id.as_deref();
    let start = Instant::now();
    let since = launch
        .started
        .checked_sub(STALE_AFTER)
        .unwrap_or(std::time::UNIX_EPOCH);
    let tag = run_id.unwrap_or("").as_bytes();
    // What the file there held, when it was not this run's: older than this run, or another
    // run's (another run id, or none where this run has one).
    let (mut stale, mut other) = (false, false);
    loop {
        let fresh = run_id.is_some()
            || std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
        if fresh {
            if let Ok(bytes) = std::fs::read(path) {
                match bytes.split_first_chunk::<ID_BYTES>() {
                    Some((id, rest)) if rest == tag => return Ok(*id),
                    // Written atomically, so never seen half-written: another run's, or not
                    // a rendezvous file at all.
                    _ if !other => {
                        other = true;
                        eprintln!(
                            "mote: rendezvous: {} was written for another run (MOTE_RUN_ID \
                             differs, or is set on one side only, or another mote build wrote \
                             it); waiting for rank 0 of this run to write it",
                            path.display()
                        );
                    }
                    _ => {}
                }
            }
        } else if !stale && path.exists() {
            stale = true;
            eprintln!(
                "mote: rendezvous: {} is older than this run (left by an earlier one?); \
                 waiting for rank 0 to write it anew",
                path.display()
            );
        }
        if start.elapsed() > timeout {
            let what = if other {
                "was not written for this run (the file there is another run's: is \
                 MOTE_RUN_ID the same on every rank?)"
            } else if stale {
                "was not written anew (the file there is older than this run)"
            } else {
                "did not appear"
            };
            return Err(late(format!(
                "rendezvous: {} {what} within {} s",
                path.display(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a rank sends rank 0 once it has the id, over TCP.
const ACK: u8 = 0x6d;

/// How long rank 0 gives one connection to send its rank and tag, and its acknowledgement of
/// the id, in all.
const PEER_READ: Duration = Duration::from_secs(5);

/// Fills `buf` from `s` by `deadline`: a peer that sends slowly cannot hold rank 0 past it.
fn read_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[at..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Rank 0: accepts connections until every rank `1..=peers` has sent its rank and its run's
/// tag ([`run_tag`]; 8 bytes each, little-endian), received the id and acknowledged it
/// ([`ACK`]; a rank that gave up on a connection tries again on another); connections that send
/// nothing valid (a port probe, a rank of another run) are dropped and not counted. Gives up
/// after `timeout` however the connections come: each has [`PEER_READ`] at most, within it.
fn serve(addr: &str, peers: usize, id: &[u8; ID_BYTES], tag: u64, timeout: Duration) -> Result<()> {
    let io = |e: std::io::Error| late(format!("rendezvous on {addr}: {e}"));
    let listener = TcpListener::bind(listen_addr(addr).map_err(io)?).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    let end = Instant::now() + timeout;
    // The ranks served (a set: a world size may be large).
    let mut joined = std::collections::HashSet::new();
    let mut refused = 0;
    while joined.len() < peers {
        if Instant::now() > end {
            let others = if refused > 0 {
                format!(
                    " ({refused} other connection{} refused: not ranks of this run)",
                    if refused == 1 { " was" } else { "s were" }
                )
            } else {
                String::new()
            };
            return Err(late(format!(
                "rendezvous on {addr}: {} of {peers} ranks connected within {} s{others}",
                joined.len(),
                timeout.as_secs()
            )));
        }
        match listener.accept() {
            Ok((mut s, _)) => {
                let mut hello = [0u8; 16];
                let by = end.min(Instant::now() + PEER_READ);
                let valid = s.set_nonblocking(false).is_ok()
                    && s.set_write_timeout(Some(PEER_READ)).is_ok()
                    && read_by(&mut s, &mut hello, by).is_ok();
                let (rank, theirs) = hello.split_at(8);
                let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                let r = usize::try_from(word(rank)).unwrap_or(0);
                if valid && word(theirs) == tag && (1..=peers).contains(&r) {
                    // Counted once the rank says it has the id: a rank that gave up waiting
                    // on this connection (rank 0 was busy) left it, and is on another.
                    let mut ack = [0u8; 1];
                    if s.write_all(id).is_ok()
                        && read_by(&mut s, &mut ack, by).is_ok()
                        && ack == [ACK]
                    {
                        joined.insert(r);
                    }
                } else {
                    if refused == 0 {
                        eprintln!(
                            "mote: rendezvous on {addr}: refused a connection that is not a rank \
                             of this run (another MOTE_RUN_ID or MOTE_WORLD_SIZE, another mote \
                             build, or not mote)"
                        );
                    }
                    refused += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

/// Where rank 0 listens for `addr` (`HOST:PORT`): every interface, on that port, as
/// `torchrun`'s store does. The host names rank 0's machine for the others; on rank 0 itself
/// it may resolve to a loopback address (Debian and Ubuntu map a machine's own name to
/// 127.0.1.1), where the other hosts could not reach it. The any-address of the host's first
/// address's family: IPv4's for an IPv4 host, IPv6's for an IPv6 one. A run given a loopback
/// address itself (`localhost`, `127.0.0.1`, `[::1]`: one host) listens there only.
///
/// # Errors
/// The resolution's, for a host that does not resolve or an address without a valid port.
pub fn listen_addr(addr: &str) -> std::io::Result<SocketAddr> {
    let first = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
    })?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(first);
    }
    let any = match first {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Ok(SocketAddr::new(any, first.port()))
}

/// Ranks 1..: connects to rank 0 (retrying until it listens, each try bounded by the time
/// left, each of the host's addresses in turn), sends its rank and its run's tag, and reads
/// the id.
fn fetch(addr: &str, rank: usize, tag: u64, timeout: Duration) -> Result<[u8; ID_BYTES]> {
    let start = Instant::now();
    loop {
        // Each of the host's addresses gets at most 5 s a try: one that drops connections
        // silently (a firewalled IPv6 address, say) must not take the whole wait.
        let left = timeout
            .saturating_sub(start.elapsed())
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        let conn = addr.to_socket_addrs().and_then(|addrs| {
            let mut last =
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host");
            for a in addrs {
                match TcpStream::connect_timeout(&a, left) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        match conn {
            Ok(mut s) => {
                let mut id = [0u8; ID_BYTES];
                s.set_read_timeout(Some(left)).ok();
                let hello = [(rank as u64).to_le_bytes(), tag.to_le_bytes()].concat();
                let got = s
                    .write_all(&hello)
                    .and_then(|()| s.read_exact(&mut id))
                    .and_then(|()| s.write_all(&[ACK]));
                match got {
                    Ok(()) => return Ok(id),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err(late(format!(
                            "rendezvous with {addr}: rank 0 there closed the connection \
                             without its id: it is another run's (MOTE_RUN_ID differs), has \
                             no rank {rank} (MOTE_WORLD_SIZE differs), or is another mote \
                             build"
                        )))
                    }
                    // Rank 0 serves one connection at a time: it may be busy with another
                    // (a slow one holds it up to 5 s), or have dropped this one when it was.
                    // Try again while there is time.
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::BrokenPipe
                        ) && start.elapsed() < timeout =>
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(late(format!("rendezvous with {addr}: {e}"))),
                }
            }
            Err(e) if start.elapsed() > timeout => {
                return Err(late(format!(
                    "rendezvous: rank 0 at {addr} not reachable within {} s ({e})",
                    timeout.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// How long a rank of a multi-process run may go without finishing a training step before its
/// [`Watchdog`] ends it: `MOTE_TIMEOUT` seconds (default 600, PyTorch's NCCL timeout); `None`
/// (no watchdog) for `MOTE_TIMEOUT=0` or `off`.
///
/// # Errors
/// `Invalid` for a value that is not a number of seconds (or one too large to count).
pub fn step_timeout(var: impl Fn(&str) -> Option<String>) -> Result<Option<Duration>> {
    let Some(v) = var("MOTE_TIMEOUT") else {
        return Ok(Some(Duration::from_secs(600)));
    };
    let t = v.trim();
    if t == "off" {
        return Ok(None);
    }
    match t
        .parse::<f64>()
        .map(|s| (s, Duration::try_from_secs_f64(s)))
    {
        Ok((0.0, Ok(_))) => Ok(None),
        // A positive value too small to count still watches (at least a millisecond).
        Ok((_, Ok(d))) => Ok(Some(d.max(Duration::from_millis(1)))),
        _ => Err(
            Error::invalid(format!("MOTE_TIMEOUT={v}: not a number of seconds")).with_hint(
                "for example MOTE_TIMEOUT=600; MOTE_TIMEOUT=off switches the watchdog off",
            ),
        ),
    }
}

/// Ends a rank that stops making progress. NCCL waits for every rank of a collective with no
/// limit, so when one rank of a run fails (a non-finite loss on its shard, a full disk, a
/// killed process), the others would wait forever inside the next all-reduce; PyTorch's NCCL
/// watchdog ends them after a timeout, and so does this one. [`Watchdog::beat`] (called after
/// every step and epoch: it is a [`crate::train::Callback`]) restarts the clock; when `timeout`
/// passes without a beat, a thread of its own calls `on_timeout` once with the time waited
/// (the command-line program prints what happened and aborts the process, since the training
/// thread may be stuck inside the GPU driver). Dropping the watchdog stops it.
pub struct Watchdog {
    state: std::sync::Arc<Dog>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Dog {
    start: Instant,
    /// Milliseconds from `start` to the last beat.
    last: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
}

impl Dog {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Watchdog {
    /// Starts the clock.
    ///
    /// # Errors
    /// `Invalid` when the system cannot start the watchdog's thread.
    pub fn new(
        timeout: Duration,
        on_timeout: impl FnOnce(Duration) + Send + 'static,
    ) -> Result<Watchdog> {
        use std::sync::atomic::Ordering;
        let state = std::sync::Arc::new(Dog {
            start: Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let dog = state.clone();
        let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // Checks a few times per timeout, at least once a second.
        let tick = (timeout / 8).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let spawned = std::thread::Builder::new()
            .name("mote-watchdog".into())
            .spawn(move || loop {
                std::thread::park_timeout(tick);
                if dog.stop.load(Ordering::Acquire) {
                    return;
                }
                let waited = dog
                    .now_ms()
                    .saturating_sub(dog.last.load(Ordering::Acquire));
                if waited >= limit {
                    on_timeout(Duration::from_millis(waited));
                    return;
                }
            });
        let thread = spawned.map_err(|e| Error::invalid(format!("the watchdog's thread: {e}")))?;
        Ok(Watchdog {
            state,
            thread: Some(thread),
        })
    }

    /// Progress: restarts the clock.
    pub fn beat(&self) {
        self.state
            .last
            .store(self.state.now_ms(), std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl crate::train::Callback for Watchdog {
    fn on_step(&mut self, _epoch: usize, _step: usize, _running_loss: f64) {
        self.beat();
    }

    fn on_epoch(&mut self, _log: &crate::train::EpochLog) {
        self.beat();
    }
}
