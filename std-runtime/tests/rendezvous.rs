//! The multi-process launch on the CPU: the environment read into a `Launch`, every refusal, and
//! rank 0's id handed to the other ranks through a file and through TCP (threads stand in for
//! processes), with the timeouts when rank 0 never comes; the watchdog that ends a rank whose
//! steps stop.

use std::collections::HashMap;
use std::time::Duration;

use mote_runtime::rendezvous::{exchange, step_timeout, Launch, Rendezvous, Watchdog, ID_BYTES};

fn launch(vars: &[(&str, &str)]) -> mote_runtime::Result<Option<Launch>> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Launch::from_vars(|k| map.get(k).cloned())
}

#[test]
fn the_environment_makes_a_launch_or_says_what_is_wrong() {
    assert_eq!(
        launch(&[]).unwrap(),
        None,
        "no MOTE_WORLD_SIZE: one process"
    );
    let l = launch(&[
        ("MOTE_WORLD_SIZE", "4"),
        ("MOTE_RANK", "3"),
        ("MOTE_RENDEZVOUS", "tcp:10.0.0.1:29500"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((l.world, l.rank, l.local_rank), (4, 3, 3));
    assert_eq!(l.rendezvous, Rendezvous::Tcp("10.0.0.1:29500".into()));
    let l = launch(&[
        ("MOTE_WORLD_SIZE", "4"),
        ("MOTE_RANK", "3"),
        ("MOTE_LOCAL_RANK", "1"),
        ("MOTE_RENDEZVOUS", "file:/shared/run.id"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(l.local_rank, 1);
    assert_eq!(l.rendezvous, Rendezvous::File("/shared/run.id".into()));
    assert_eq!(l.run_id, None);
    let with_id = |id: &str| {
        launch(&[
            ("MOTE_WORLD_SIZE", "2"),
            ("MOTE_RANK", "1"),
            ("MOTE_RENDEZVOUS", "tcp:h:1"),
            ("MOTE_RUN_ID", id),
        ])
    };
    assert_eq!(
        with_id("job-17").unwrap().unwrap().run_id.as_deref(),
        Some("job-17")
    );
    assert_eq!(with_id("").unwrap().unwrap().run_id, None, "empty: none");
    for bad in ["a\nb".to_string(), "x".repeat(257)] {
        let e = with_id(&bad).unwrap_err().to_string();
        assert!(
            e.contains("MOTE_RUN_ID") && e.contains("at most 256 bytes"),
            "{e}"
        );
    }
    for (vars, needle) in [
        (vec![("MOTE_WORLD_SIZE", "2")], "MOTE_RANK is not"),
        (
            vec![("MOTE_WORLD_SIZE", "two"), ("MOTE_RANK", "0")],
            "not a number",
        ),
        (
            vec![
                ("MOTE_WORLD_SIZE", "2"),
                ("MOTE_RANK", "2"),
                ("MOTE_RENDEZVOUS", "tcp:h:1"),
            ],
            "below the size",
        ),
        (
            vec![("MOTE_WORLD_SIZE", "2"), ("MOTE_RANK", "0")],
            "MOTE_RENDEZVOUS is not",
        ),
        (
            vec![
                ("MOTE_WORLD_SIZE", "2"),
                ("MOTE_RANK", "0"),
                ("MOTE_RENDEZVOUS", "udp:h:1"),
            ],
            "not file:PATH or tcp:HOST:PORT",
        ),
    ] {
        let e = launch(&vars).unwrap_err().to_string();
        assert!(e.contains(needle), "{vars:?}: {e}");
    }
}

/// A free port: bind to port 0, note it, release it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `world` ranks on threads against `rendezvous`, all with `run_id`; returns the id each
/// one ended with.
fn run(world: usize, rendezvous: Rendezvous, run_id: Option<&str>) -> Vec<[u8; ID_BYTES]> {
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let l = Launch {
                world,
                rank,
                local_rank: rank,
                rendezvous: rendezvous.clone(),
                run_id: run_id.map(str::to_string),
                started: std::time::SystemTime::now(),
            };
            std::thread::spawn(move || {
                // The others start first: they must wait for rank 0.
                if rank == 0 {
                    std::thread::sleep(Duration::from_millis(200));
                }
                exchange(&l, Duration::from_secs(20), || {
                    Ok(std::array::from_fn(|i| (i * 7 + 3) as u8))
                })
                .unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn rank_zero_hands_its_id_to_every_rank() {
    let want: [u8; ID_BYTES] = std::array::from_fn(|i| (i * 7 + 3) as u8);
    let dir = std::env::temp_dir().join(format!("mote-rdv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.id");
    let _ = std::fs::remove_file(&file);
    for run_id in [None, Some("job-17")] {
        let _ = std::fs::remove_file(&file);
        for id in run(3, Rendezvous::File(file.clone()), run_id) {
            assert_eq!(id, want, "through a file, run id {run_id:?}");
        }
    }
    let port = free_port();
    for run_id in [None, Some("job-17")] {
        for id in run(4, Rendezvous::Tcp(format!("127.0.0.1:{port}")), run_id) {
            assert_eq!(id, want, "through TCP, run id {run_id:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// A file left by an earlier run (older than STALE_AFTER) is not read: the rank waits for rank
// 0 to write it anew, and takes that id.
#[test]
fn a_stale_rendezvous_file_is_not_read() {
    let dir = std::env::temp_dir().join(format!("mote-rdv-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.id");
    std::fs::write(&file, [7u8; ID_BYTES]).unwrap();
    let old = std::time::SystemTime::now() - 2 * mote_runtime::rendezvous::STALE_AFTER;
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let rank1 = Launch {
        world: 2,
        rank: 1,
        local_rank: 1,
        rendezvous: Rendezvous::File(file.clone()),
        run_id: None,
        started: std::time::SystemTime::now(),
    };
    let e = exchange(&rank1, Duration::from_millis(200), || unreachable!())
        .unwrap_err()
        .to_string();
    assert!(e.contains("was not written anew"), "{e}");
    let writer = {
        let file = file.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            mote_runtime::checkpoint::write_atomic(&file, &[9u8; ID_BYTES]).unwrap();
        })
    };
    let id = exchange(&rank1, Duration::from_secs(10), || unreachable!()).unwrap();
    writer.join().unwrap();
    assert_eq!(id, [9u8; ID_BYTES]);
    let _ = std::fs::remove_dir_all(&dir);
}

// A file's age is measured from the rank's start, not from when it reaches the rendezvous: a
// rank that took longer than `STALE_AFTER` to load its data still reads rank 0's file, written
// at rank 0's start.
#[test]
fn a_file_is_stale_relative_to_the_ranks_start() {
    use mote_runtime::rendezvous::STALE_AFTER;
    let dir = std::env::temp_dir().join(format!("mote-rdv-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.id");
    std::fs::write(&file, [4u8; ID_BYTES]).unwrap();
    let now = std::time::SystemTime::now();
    let written = now - STALE_AFTER - Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(written)
        .unwrap();
    let rank1 = |started| Launch {
        world: 2,
        rank: 1,
        local_rank: 1,
        rendezvous: Rendezvous::File(file.clone()),
        run_id: None,
        started,
    };
    // Started 40 s before the file was written... and 70 s ago: loading took a minute.
    let slow = rank1(now - STALE_AFTER - Duration::from_secs(40));
    assert_eq!(
        exchange(&slow, Duration::from_secs(1), || unreachable!()).unwrap(),
        [4u8; ID_BYTES]
    );
    // A rank that started now finds the file too old.
    let e = exchange(&rank1(now), Duration::from_millis(200), || unreachable!())
        .unwrap_err()
        .to_string();
    assert!(e.contains("was not written anew"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

// Rank 0 listens on every interface at the given port (its host name may resolve to a
// loopback address on its own machine), in the family of the host's address; a run given a
// loopback address itself (one host) listens there only.
#[test]
fn rank_zero_listens_on_every_interface() {
    use mote_runtime::rendezvous::listen_addr;
    for (given, want) in [
        ("10.0.0.1:7", "0.0.0.0:7"),
        ("192.168.3.4:29500", "0.0.0.0:29500"),
        ("[2001:db8::1]:29500", "[::]:29500"),
        ("127.0.0.1:29500", "127.0.0.1:29500"),
        ("[::1]:29500", "[::1]:29500"),
    ] {
        assert_eq!(listen_addr(given).unwrap().to_string(), want, "{given}");
    }
    let local = listen_addr("localhost:1234").unwrap();
    assert!(local.ip().is_loopback() && local.port() == 1234, "{local}");
    assert!(listen_addr("10.0.0.1:notaport").is_err());
}

// With a run id, a file is this run's by what it holds, not by its age: an old file written for
// this run is read (rank 0 may have started long before the others), one written for another
// run, or without an id, is not, however fresh; a rank of another run gets no id over TCP.
#[test]
fn a_run_id_tells_this_runs_rendezvous_from_anothers() {
    let dir = std::env::temp_dir().join(format!("mote-rdv-runid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.id");
    let rank = |rank: usize, rendezvous: Rendezvous, run_id: Option<&str>| Launch {
        world: 2,
        rank,
        local_rank: rank,
        rendezvous,
        run_id: run_id.map(str::to_string),
        started: std::time::SystemTime::now(),
    };
    let mine = rank(1, Rendezvous::File(file.clone()), Some("job-2"));
    // Rank 0 of job-2 wrote it two minutes ago: still read.
    let writer = rank(0, Rendezvous::File(file.clone()), Some("job-2"));
    exchange(&writer, Duration::from_secs(1), || Ok([5u8; ID_BYTES])).unwrap();
    let old = std::time::SystemTime::now() - 2 * mote_runtime::rendezvous::STALE_AFTER;
    let set_old = || {
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap()
    };
    set_old();
    let id = exchange(&mine, Duration::from_secs(1), || unreachable!()).unwrap();
    assert_eq!(id, [5u8; ID_BYTES]);
    // Another run's file (job-1), and one written without a run id: fresh, but not read.
    for other in [Some("job-1"), None] {
        let writer = rank(0, Rendezvous::File(file.clone()), other);
        exchange(&writer, Duration::from_secs(1), || Ok([6u8; ID_BYTES])).unwrap();
        let e = exchange(&mine, Duration::from_millis(200), || unreachable!())
            .unwrap_err()
            .to_string();
        assert!(e.contains("another run's"), "{other:?}: {e}");
    }
    // And a rank without a run id does not read a file written for one.
    let writer = rank(0, Rendezvous::File(file.clone()), Some("job-2"));
    exchange(&writer, Duration::from_secs(1), || Ok([5u8; ID_BYTES])).unwrap();
    let plain = rank(1, Rendezvous::File(file.clone()), None);
    let e = exchange(&plain, Duration::from_millis(200), || unreachable!())
        .unwrap_err()
        .to_string();
    assert!(e.contains("another run's"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);

    // TCP: rank 0 of job-2 serves only job-2's rank 1; job-1's is told why it got nothing.
    let port = free_port();
    let addr = Rendezvous::Tcp(format!("127.0.0.1:{port}"));
    let server = {
        let zero = rank(0, addr.clone(), Some("job-2"));
        std::thread::spawn(move || exchange(&zero, Duration::from_secs(20), || Ok([8u8; ID_BYTES])))
    };
    let stranger = rank(1, addr.clone(), Some("job-1"));
    let e = exchange(&stranger, Duration::from_secs(10), || unreachable!())
        .unwrap_err()
        .to_string();
    assert!(e.contains("another run's (MOTE_RUN_ID differs)"), "{e}");
    let id = exchange(
        &rank(1, addr, Some("job-2")),
        Duration::from_secs(10),
        || unreachable!(),
    )
    .unwrap();
    assert_eq!(id, [8u8; ID_BYTES]);
    assert_eq!(server.join().unwrap().unwrap(), [8u8; ID_BYTES]);
    // A rank 0 that only ever saw another run's rank says so when it gives up.
    let port = free_port();
    let addr = Rendezvous::Tcp(format!("127.0.0.1:{port}"));
    let server = {
        let zero = rank(0, addr.clone(), Some("job-2"));
        std::thread::spawn(move || {
            exchange(&zero, Duration::from_millis(1500), || Ok([8u8; ID_BYTES]))
        })
    };
    let stranger = rank(1, addr, Some("job-1"));
    assert!(exchange(&stranger, Duration::from_secs(1), || unreachable!()).is_err());
    let e = server.join().unwrap().unwrap_err().to_string();
    assert!(
        e.contains("0 of 1 ranks connected") && e.contains("1 other connection was refused"),
        "{e}"
    );
}

/// Rank 0 gives up at its timeout however connections come: a stream of connections that send
/// nothing (each held for its own read timeout) cannot keep it waiting past it.
#[test]
fn rank_zero_times_out_under_a_stream_of_silent_connections() {
    let port = free_port();
    let zero = Launch {
        world: 2,
        rank: 0,
        local_rank: 0,
        rendezvous: Rendezvous::Tcp(format!("127.0.0.1:{port}")),
        run_id: None,
        started: std::time::SystemTime::now(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = exchange(&zero, Duration::from_secs(1), || Ok([8u8; ID_BYTES]));
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut open = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    open.push(c);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let got = rx.recv_timeout(Duration::from_secs(60));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
    let e = got
        .expect("rank 0 kept waiting past its timeout")
        .unwrap_err();
    assert!(e.contains("0 of 1 ranks connected within 1 s"), "{e}");
}

/// A connection that sends nothing holds rank 0 for up to 5 s; a rank that connects behind two
/// of them (10 s, past its own 5 s wait for an answer) tries again and gets the id.
#[test]
fn a_rank_behind_a_silent_connection_still_joins() {
    let port = free_port();
    let rank = |rank: usize| Launch {
        world: 2,
        rank,
        local_rank: rank,
        rendezvous: Rendezvous::Tcp(format!("127.0.0.1:{port}")),
        run_id: None,
        started: std::time::SystemTime::now(),
    };
    let zero = rank(0);
    let server = std::thread::spawn(move || {
        exchange(&zero, Duration::from_secs(30), || Ok([3u8; ID_BYTES]))
    });
    let silent = [0, 1].map(|_| loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    });
    let id = exchange(&rank(1), Duration::from_secs(30), || unreachable!()).unwrap();
    assert_eq!(id, [3u8; ID_BYTES]);
    assert_eq!(server.join().unwrap().unwrap(), [3u8; ID_BYTES]);
    drop(silent);
}

/// Rank 0's rendezvous file goes when its guard does (every rank joined, or rank 0 failed
/// first); other ranks' guards, and TCP rendezvous, touch nothing.
#[test]
fn rank_zero_removes_its_spent_file() {
    use mote_runtime::rendezvous::SpentFile;
    let dir = std::env::temp_dir().join(format!("mote-rdv-spent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.id");
    let launch = |rank: usize, rendezvous: Rendezvous| Launch {
        world: 2,
        rank,
        local_rank: rank,
        rendezvous,
        run_id: Some("job-3".into()),
        started: std::time::SystemTime::now(),
    };
    std::fs::write(&file, b"id").unwrap();
    drop(SpentFile::of(&launch(1, Rendezvous::File(file.clone()))));
    drop(SpentFile::of(&launch(
        0,
        Rendezvous::Tcp("127.0.0.1:1".into()),
    )));
    assert!(file.exists(), "not rank 0's file to remove");
    let failing = || -> Result<(), String> {
        let _spent = SpentFile::of(&launch(0, Rendezvous::File(file.clone())));
        Err("NCCL failed".into())
    };
    assert!(failing().is_err());
    assert!(!file.exists(), "removed when rank 0 failed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rank_without_rank_zero_times_out_with_a_clear_error() {
    let never = |r: Rendezvous| Launch {
        world: 2,
        rank: 1,
        local_rank: 1,
        rendezvous: r,
        run_id: None,
        started: std::time::SystemTime::now(),
    };
    let gone = std::env::temp_dir().join(format!("mote-rdv-none-{}.id", std::process::id()));
    let e = exchange(
        &never(Rendezvous::File(gone)),
        Duration::from_millis(200),
        || unreachable!("only rank 0 makes the id"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("did not appear"), "{e}");
    let e = exchange(
        &never(Rendezvous::Tcp("127.0.0.1:9".into())),
        Duration::from_millis(200),
        || unreachable!("only rank 0 makes the id"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not reachable"), "{e}");
}

#[test]
fn the_step_timeout_comes_from_mote_timeout() {
    assert_eq!(
        step_timeout(|_| None).unwrap(),
        Some(Duration::from_secs(600))
    );
    let set = |v: &'static str| step_timeout(move |k| (k == "MOTE_TIMEOUT").then(|| v.into()));
    assert_eq!(set("90").unwrap(), Some(Duration::from_secs(90)));
    assert_eq!(set(" 0.5 ").unwrap(), Some(Duration::from_millis(500)));
    assert_eq!(set("0").unwrap(), None);
    assert_eq!(set("off").unwrap(), None);
    assert_eq!(set("1e-12").unwrap(), Some(Duration::from_millis(1)));
    for bad in ["-3", "ten", "inf", "NaN", "1e20", ""] {
        let e = set(bad).unwrap_err().to_string();
        assert!(e.contains("MOTE_TIMEOUT"), "{bad}: {e}");
    }
}

/// Beats closer than the timeout keep it quiet; once they stop, it fires once, after at least
/// the timeout; a watchdog dropped in time never fires, and its drop does not wait out the
/// timeout.
#[test]
fn a_watchdog_fires_once_only_when_the_steps_stop() {
    use std::sync::mpsc;
    let timeout = Duration::from_millis(800);
    let (tx, rx) = mpsc::channel();
    let dog = Watchdog::new(timeout, move |waited| tx.send(waited).unwrap()).unwrap();
    // 1.6 s of beats, 20 ms apart: twice the timeout in all.
    for _ in 0..80 {
        std::thread::sleep(Duration::from_millis(20));
        dog.beat();
    }
    assert!(rx.try_recv().is_err(), "fired while beating");
    let waited = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("fires once the beats stop");
    assert!(waited >= timeout, "fired after {waited:?}");
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "fired twice"
    );
    drop(dog);

    let (tx, rx) = mpsc::channel::<Duration>();
    let dog = Watchdog::new(Duration::from_secs(30), move |w| tx.send(w).unwrap()).unwrap();
    let t = std::time::Instant::now();
    drop(dog);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        t.elapsed()
    );
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
}

// Ranks that do not start alike all stop: the one that differs names what differs, the others
// say that another rank does. Two ranks, their collectives played by hand.
#[test]
fn ranks_that_start_differently_all_stop() {
    use mote_runtime::rendezvous::check_same_start;
    let rank = |rank: usize| Launch {
        world: 2,
        rank,
        local_rank: rank,
        rendezvous: Rendezvous::Tcp("127.0.0.1:1".into()),
        run_id: None,
        started: std::time::SystemTime::now(),
    };
    let first = [("data", 7.0), ("checkpoint weights", -1.0)];
    let second = [("data", 8.0), ("checkpoint weights", -1.0)];
    // What rank 0 broadcasts, and the maximum of the ranks' "differs" flags.
    let from_first = |v: &mut [f64]| {
        v.copy_from_slice(&[7.0, -1.0]);
        Ok(())
    };
    let flags = |any: f64| {
        move |v: &mut [f64]| {
            v[0] = v[0].max(any);
            Ok(())
        }
    };
    let e = check_same_start(&rank(1), &second, from_first, flags(0.0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rank 1 of 2: its data differ from rank 0's"),
        "{e}"
    );
    let e = check_same_start(&rank(0), &first, from_first, flags(1.0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another rank does not start as rank 0 does"),
        "{e}"
    );
    assert!(!e.contains("  "), "a message wrapped with its indent: {e}");
    // Alike: both go on.
    check_same_start(&rank(0), &first, from_first, flags(0.0)).unwrap();
    check_same_start(&rank(1), &first, from_first, flags(0.0)).unwrap();
    // NaN compares by its bits: the same NaN is alike.
    let nan = [("data", f64::NAN)];
    check_same_start(
        &rank(1),
        &nan,
        |v: &mut [f64]| {
            v[0] = f64::NAN;
            Ok(())
        },
        flags(0.0),
    )
    .unwrap();
}
