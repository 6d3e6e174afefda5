//! A worker-level simulation of shard processors: seeded runs of lease
//! handoffs, losses, retakes, slow and failing calls (the error policy
//! `RetryThenReleaseShard`), checkpoints from a flusher thread and from
//! `shutdown_requested` (manual, or automatic as well), and a shutdown,
//! over a fake lease table, checking the processing model's promises as
//! they happen:
//!
//! - every checkpoint written is at or before the last record a processor
//!   of the shard accepted (its `process` returned `Ok`);
//! - each processor sees its shard's records in order;
//! - at most one `process` call per shard runs at any instant, and none
//!   after the processor's `lease_lost`;
//! - the buffer's room is all given back in the end.
//!
//! A failing seed is printed; run it again with `SIM_SEED=<seed>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender};

use crate::error::HandlerResult;
use crate::lease::{Checkpoint, HeldLeases};
use crate::worker::batch::ShardBatch;
use crate::worker::budget::Budget;
use crate::worker::checkpointer::Checkpointer;
use crate::worker::processing::{Checkpointing, ErrorPolicy};
use crate::worker::processor::{SHARD_QUEUE, ShardProcessor, dispatch};
use crate::worker::reader::ReaderOutput;
use crate::worker::test_support::{chunk_in, delivery, held_leases_answering, started_with};

const SHARDS: usize = 3;
/// Records per shard, sequence numbers 1 to this.
const RECORDS: u64 = 400;
const STEPS: usize = 40;

/// What every processor of a run shares, and the promises broken.
#[derive(Default)]
struct World {
    /// Per shard: the last record a processor accepted.
    accepted: Mutex<HashMap<String, u64>>,
    /// Per shard: `process` calls running now.
    inside: Mutex<HashMap<String, usize>>,
    /// Calls that fail: each call's number decides (seeded).
    calls: AtomicU64,
    seed: u64,
    broken: Mutex<Vec<String>>,
}

impl World {
    fn broke(&self, what: String) {
        self.broken.lock().unwrap().push(what);
    }

    /// Whether call number `n` fails: about one in five.
    fn fails(&self, n: u64) -> bool {
        mix(self.seed ^ n).is_multiple_of(5)
    }
}

/// A processor that checks what it is given.
struct Sim {
    shard: String,
    world: Arc<World>,
    /// The last record this processor accepted.
    last: u64,
    lost: bool,
}

impl ShardProcessor<String> for Sim {
    fn initialize(&mut self, shard_id: &str, _: &Checkpoint) -> HandlerResult {
        self.shard = shard_id.to_owned();
        Ok(())
    }

    fn process(&mut self, records: ShardBatch<String>, _: &Checkpointer) -> HandlerResult {
        let world = &self.world;
        if self.lost {
            world.broke(format!("{}: process after lease_lost", self.shard));
        }
        let now = {
            let mut inside = world.inside.lock().unwrap();
            let n = inside.entry(self.shard.clone()).or_default();
            *n += 1;
            *n
        };
        if now > 1 {
            world.broke(format!("{}: {now} process calls at once", self.shard));
        }
        let values: Vec<u64> = records
            .messages()
            .iter()
            .map(|m| m.value().parse().unwrap())
            .collect();
        if values.windows(2).any(|w| w[0] >= w[1]) || values[0] <= self.last {
            world.broke(format!(
                "{}: {values:?} after {} (out of order)",
                self.shard, self.last
            ));
        }
        // Now and then a slow call: a lease may change meanwhile.
        let n = world.calls.fetch_add(1, Ordering::SeqCst);
        let slow = mix(world.seed ^ n ^ 0x5109).is_multiple_of(6);
        std::thread::sleep(Duration::from_millis(if slow { 30 } else { 2 }));
        let fails = world.fails(n);
        if !fails {
            self.last = *values.last().unwrap();
            let mut accepted = world.accepted.lock().unwrap();
            let max = accepted.entry(self.shard.clone()).or_default();
            *max = (*max).max(self.last);
        }
        *world.inside.lock().unwrap().get_mut(&self.shard).unwrap() -= 1;
        if fails { Err("failing".into()) } else { Ok(()) }
    }

    fn lease_lost(&mut self) {
        self.lost = true;
    }

    fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> HandlerResult {
        // As a processor ported from the KCL does.
        Ok(checkpointer.checkpoint(&self.shard)?)
    }
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A reader of one lease: its shard's records after `from`, one or two per
/// read, each holding room in `budget`, until the lease is no longer held
/// under `epoch` or its processor is gone.
fn read(
    held: Arc<HeldLeases>,
    budget: Arc<Budget>,
    shard: String,
    epoch: u64,
    from: u64,
    queue: Sender<ReaderOutput<String>>,
) {
    let mut next = from + 1;
    while next <= RECORDS && held.is_current(&shard, epoch) {
        let last = (next + next % 2).min(RECORDS);
        let records: Vec<(String, String)> = (next..=last)
            .map(|s| (s.to_string(), s.to_string()))
            .collect();
        let records: Vec<(&str, &str)> = records
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let Some(mut output) = chunk_in(&budget, &shard, epoch, &records) else {
            return;
        };
        loop {
            match queue.send_timeout(output, Duration::from_millis(20)) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(back)) if held.is_current(&shard, epoch) => {
                    output = back
                }
                Err(_) => return, // dropped: its room is given back
            }
        }
        next = last + 1;
    }
}

/// One seeded run; the promises it saw broken.
fn run(seed: u64) -> Vec<String> {
    let world = Arc::new(World {
        seed,
        ..World::default()
    });
    // Checkpoints are checked as they reach the table.
    let watcher = world.clone();
    let written: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let table_written = written.clone();
    let (_server, held) = held_leases_answering(move |request| {
        let body: serde_json::Value = serde_json::from_str(&request.body).unwrap_or_default();
        let checkpoint = body["ExpressionAttributeValues"][":checkpoint"]["S"].as_str();
        if let Some(Ok(position)) = checkpoint.map(str::parse::<u64>) {
            let shard = body["Key"]["leaseKey"]["S"].as_str().unwrap_or_default();
            let accepted = watcher.accepted.lock().unwrap().get(shard).copied();
            if accepted.is_none_or(|a| position > a) {
                watcher.broke(format!(
                    "{shard}: checkpoint {position} past the last accepted, {accepted:?}"
                ));
            }
            table_written
                .lock()
                .unwrap()
                .insert(shard.to_owned(), position);
        }
        (
            200,
            r#"{"Attributes":{"leaseCounter":{"N":"1"}}}"#.to_owned(),
        )
    });
    let mut delivery = delivery(
        &held,
        ErrorPolicy::RetryThenReleaseShard {
            retries: 1,
            backoff: Duration::from_millis(1),
        },
    );
    // Odd seeds checkpoint automatically, even ones only through the
    // flusher and `shutdown_requested`.
    delivery.checkpointing = match seed % 2 {
        0 => Checkpointing::Manual,
        _ => Checkpointing::Automatic,
    };
    let budget = Arc::new(Budget::new(1 << 20, 10_000));
    delivery.budget = budget.clone();
    let (shutdown, flusher) = (delivery.shutdown.clone(), delivery.checkpointer.clone());
    let (outputs, records) = crossbeam_channel::unbounded();
    let sims = world.clone();
    let dispatcher = std::thread::spawn(move || {
        dispatch(&records, delivery, move |_: &str| Sim {
            shard: String::new(),
            world: sims.clone(),
            last: 0,
            lost: false,
        })
    });
    // A flusher thread checkpoints every shard all along.
    let flushing = Arc::new(AtomicBool::new(true));
    let flusher_thread = {
        let flushing = flushing.clone();
        std::thread::spawn(move || {
            while flushing.load(Ordering::Relaxed) {
                for s in 0..SHARDS {
                    let _ = flusher.checkpoint(&format!("shard-{s}"));
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut rng = seed;
    for _ in 0..STEPS {
        rng = mix(rng);
        let shard = format!("shard-{}", rng % SHARDS as u64);
        let epoch = held
            .shards()
            .into_iter()
            .find(|(id, _)| *id == shard)
            .map(|(_, e)| e);
        let take = |shard: String| {
            // Taken (again): read from the checkpoint in the table.
            let epoch = held.take(&shard, 0, false).unwrap().unwrap();
            let from = written.lock().unwrap().get(&shard).copied().unwrap_or(0);
            let (queue, records) = crossbeam_channel::bounded(SHARD_QUEUE);
            outputs.send(started_with(&shard, epoch, records)).unwrap();
            let (held, budget) = (held.clone(), budget.clone());
            std::thread::spawn(move || read(held, budget, shard, epoch, from, queue))
        };
        match (epoch, (rng >> 8) % 5) {
            (None, _) => readers.push(take(shard)),
            // A peer asks for it.
            (Some(_), 0) => {
                held.hand_over(&shard, "peer");
            }
            // It lapses.
            (Some(_), 1) => held.drop_lost(&shard),
            // It lapses and this worker takes it again at once.
            (Some(_), 2) => {
                held.drop_lost(&shard);
                readers.push(take(shard));
            }
            (Some(_), _) => {}
        }
        std::thread::sleep(Duration::from_millis((rng >> 16) % 20));
    }
    shutdown.store(true, Ordering::Relaxed);
    let result = dispatcher.join().unwrap();
    flushing.store(false, Ordering::Relaxed);
    flusher_thread.join().unwrap();
    // The readers see their leases go (all released or dropped by now).
    for shard in held.shard_ids() {
        held.drop_lost(&shard);
    }
    for reader in readers {
        reader.join().unwrap();
    }
    eprintln!(
        "seed {seed}: {} process calls, accepted {:?}, written {:?}",
        world.calls.load(Ordering::SeqCst),
        world.accepted.lock().unwrap(),
        written.lock().unwrap()
    );
    let mut broken = std::mem::take(&mut *world.broken.lock().unwrap());
    if let Err(e) = result {
        broken.push(format!("run_processors failed: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while budget.used() != (0, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if budget.used() != (0, 0) {
        broken.push(format!("buffer room never given back: {:?}", budget.used()));
    }
    broken
}

#[test]
fn seeded_runs_of_processors_keep_every_promise() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().unwrap()],
        Err(_) => {
            let start = crate::random::next_u64();
            (0..4).map(|i| start.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        let broken = run(seed);
        assert!(
            broken.is_empty(),
            "seed {seed} (SIM_SEED={seed} to replay): {broken:#?}"
        );
    }
}
