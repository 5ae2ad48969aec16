//! A whole pipeline in one process: one server core and N worker threads per stage, joined
//! either by zmq (a proxy per stage; inproc by default, ipc or tcp to exercise the same code the
//! multi-process deployment uses) or by in-memory queues ([`Transport::Memory`]: no proxies, the
//! fastest way when every part lives in the process).

use crate::component;
use crate::endpoint::Endpoint;
use crate::heartbeat::Heartbeat;
use crate::interrupt::{Interrupt, SharedCancels};
use crate::memory::{MemWorker, StageQueue};
use crate::proxy::{Proxy, ProxyConfig};
use crate::server::{Limits, Server, ServerConfig};
use crate::shutdown::Shutdown;
use crate::stats::{StageStats, WorkerStats};
use crate::transport::{Context, TransportError};
use crate::work::{Job, Outcome, WorkError, WorkFn};
use crate::worker::{Worker, WorkerConfig};
use crate::Error;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Which transport the pipeline's parts talk over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Threads of one process with no proxies and no zmq: each stage's workers take jobs from a
    /// shared in-memory queue (see the `memory` module). The same pull rule as a proxy's at a
    /// fraction of the cost per job; no choose function, heartbeats or outside peers.
    Memory,
    /// Threads of one process over zmq (`inproc://NAME-…`): the same proxies and workers as a
    /// multi-process deployment.
    Inproc,
    /// Unix domain sockets in this directory (`ipc://DIR/NAME-…`).
    Ipc(std::path::PathBuf),
    /// TCP on this host, ports picked by the system (`tcp://HOST:*`).
    Tcp(String),
}

type MakeWork = Box<dyn Fn() -> WorkFn + Send + Sync>;

struct StageSpec {
    workers: usize,
    make: MakeWork,
}

/// Builds a pipeline. See [`Pipeline::stage`] and [`Pipeline::start`].
pub struct Pipeline {
    name: String,
    transport: Transport,
    stages: Vec<StageSpec>,
    /// The server core's settings (the endpoints are filled in by [`Pipeline::start`]).
    pub timeout: Option<Duration>,
    /// The most requests in flight at the server.
    pub max_in_flight: usize,
    /// Each proxy's queue limit.
    pub queue_limit: usize,
    /// Heartbeat timing of proxies and workers.
    pub heartbeat: Heartbeat,
    /// The largest frame the zmq sockets take in (see [`Context`]); inproc messages are not
    /// limited, ipc and tcp ones are.
    pub max_message_bytes: usize,
}

impl Pipeline {
    /// An empty pipeline over inproc; `name` keeps its endpoints apart from other pipelines.
    pub fn new(name: &str) -> Self {
        Pipeline {
            name: name.to_string(),
            transport: Transport::Inproc,
            stages: Vec::new(),
            timeout: Some(Duration::from_secs(60)),
            max_in_flight: 10_000,
            queue_limit: 4096,
            heartbeat: Heartbeat::default(),
            max_message_bytes: crate::transport::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Uses another transport.
    pub fn transport(&mut self, transport: Transport) -> &mut Self {
        self.transport = transport;
        self
    }

    /// Appends a stage of `workers` threads, each running a clone of `work`.
    pub fn stage<F>(&mut self, workers: usize, work: F) -> &mut Self
    where
        F: FnMut(&mut Job, &Interrupt<'_>) -> Result<Outcome, WorkError>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        self.stages.push(StageSpec {
            workers: workers.max(1),
            make: Box::new(move || Box::new(work.clone())),
        });
        self
    }

    /// Appends a stage of `workers` threads, each running a work function made by `make`.
    pub fn stage_with<M>(&mut self, workers: usize, make: M) -> &mut Self
    where
        M: Fn() -> WorkFn + Send + Sync + 'static,
    {
        self.stages.push(StageSpec {
            workers: workers.max(1),
            make: Box::new(make),
        });
        self
    }

    /// The endpoint of one part over zmq (in-memory stages have none: they never ask).
    fn endpoint(&self, part: &str) -> Result<Endpoint, Error> {
        let text = match &self.transport {
            Transport::Memory | Transport::Inproc => format!("inproc://{}-{part}", self.name),
            Transport::Ipc(dir) => format!("ipc://{}/{}-{part}", dir.display(), self.name),
            Transport::Tcp(host) => format!("tcp://{host}:*"),
        };
        Ok(Endpoint::parse(&text).map_err(TransportError::from)?)
    }

    /// [`Pipeline::start`] inside `rt`, so that the server core's pump runs on that runtime,
    /// beside the front that will serve on it.
    pub fn start_in(&self, rt: &tokio::runtime::Runtime) -> Result<Running, Error> {
        let _entered = rt.enter();
        self.start()
    }

    /// Binds everything and starts every thread.
    pub fn start(&self) -> Result<Running, Error> {
        if self.transport == Transport::Memory {
            return self.start_in_memory();
        }
        let ctx = Context::with_max_message_bytes(self.max_message_bytes);
        let shutdown = Shutdown::new();
        let mut proxies = Vec::new();
        for i in 0..self.stages.len() {
            let mut cfg = ProxyConfig::new(
                self.endpoint(&format!("stage{}-up", i + 1))?,
                self.endpoint(&format!("stage{}-down", i + 1))?,
            );
            cfg.stage = format!("stage{}", i + 1);
            cfg.queue_limit = self.queue_limit;
            cfg.heartbeat = self.heartbeat;
            proxies.push(Proxy::bind(&ctx, cfg)?);
        }
        // No stage: the server connects to an endpoint nobody binds, and every request is
        // answered at its deadline or the stop, as one waiting for a proxy that is not there.
        let first = match proxies.first() {
            Some(p) => p.upstream_endpoint()?,
            None => self.endpoint("stage1-up")?,
        };
        let mut scfg = ServerConfig::new(
            first,
            self.endpoint("loopback")?,
            self.endpoint("interrupt")?,
        );
        scfg.timeout = self.timeout;
        scfg.max_in_flight = self.max_in_flight;
        scfg.heartbeat = self.heartbeat;
        let server = Server::start(&ctx, scfg, shutdown.clone())?;
        let mut threads = Vec::new();
        let mut worker_stats = Vec::new();
        let mut ups = Vec::new();
        let mut downs = Vec::new();
        for p in &proxies {
            ups.push(p.upstream_endpoint()?);
            downs.push(p.downstream_endpoint()?);
        }
        let (Some(loopback), Some(interrupt)) =
            (server.loopback_endpoint(), server.interrupt_endpoint())
        else {
            unreachable!("a server started over zmq has both endpoints");
        };
        for (i, spec) in self.stages.iter().enumerate() {
            let mut stats = Vec::new();
            for w in 0..spec.workers {
                let mut cfg =
                    WorkerConfig::new(downs[i].clone(), loopback.clone(), interrupt.clone());
                cfg.downstream = ups.get(i + 1).cloned();
                cfg.heartbeat = self.heartbeat;
                cfg.stage = (i + 1) as u8;
                let worker = Worker::connect(&ctx, cfg, (spec.make)())?;
                stats.push(worker.stats());
                threads.push(worker.spawn(format!("stage{}-w{w}", i + 1), shutdown.clone())?);
            }
            worker_stats.push(stats);
        }
        let mut stage_stats = Vec::new();
        for (i, p) in proxies.into_iter().enumerate() {
            stage_stats.push(p.stats());
            threads.push(p.spawn(format!("stage{}-proxy", i + 1), shutdown.clone())?);
        }
        Ok(Running {
            ctx: Some(ctx),
            server,
            shutdown,
            threads,
            stage_stats,
            worker_stats,
            stage_endpoints: ups.into_iter().zip(downs).collect(),
        })
    }
}

impl Pipeline {
    /// [`Pipeline::start`] for [`Transport::Memory`]: a queue per stage, the server core
    /// feeding the first, workers pulling from theirs.
    fn start_in_memory(&self) -> Result<Running, Error> {
        let shutdown = Shutdown::new();
        let cancels = Arc::new(SharedCancels::default());
        let stage_stats: Vec<Arc<StageStats>> =
            self.stages.iter().map(|_| Arc::default()).collect();
        let queues: Vec<Arc<StageQueue>> = stage_stats
            .iter()
            .map(|stats| StageQueue::new(self.queue_limit, stats.clone()))
            .collect();
        let first = match queues.first() {
            Some(q) => q.clone(),
            // No stage: a queue nobody serves; its requests end at their deadline or the stop.
            None => StageQueue::new(self.queue_limit, Arc::default()),
        };
        let limits = Limits {
            timeout: self.timeout,
            max_in_flight: self.max_in_flight,
            ..Limits::default()
        };
        let server =
            Server::start_in_memory(limits, first, queues.clone(), cancels.clone(), &shutdown);
        let server_stats = server.stats();
        let mut threads = Vec::new();
        let mut worker_stats = Vec::new();
        for (i, spec) in self.stages.iter().enumerate() {
            let mut stats = Vec::new();
            queues[i]
                .stats()
                .workers
                .store(spec.workers as u64, std::sync::atomic::Ordering::Relaxed);
            for w in 0..spec.workers {
                let worker = MemWorker {
                    stage: (i + 1) as u8,
                    queue: queues[i].clone(),
                    next: queues.get(i + 1).cloned(),
                    cancels: cancels.clone(),
                    work: (spec.make)(),
                    stats: Arc::default(),
                    server_stats: server_stats.clone(),
                };
                stats.push(worker.stats.clone());
                let sd = shutdown.clone();
                threads.push(component::spawn(
                    format!("stage{}-w{w}", i + 1),
                    move || {
                        worker.run(sd);
                        Ok(())
                    },
                )?);
            }
            worker_stats.push(stats);
        }
        Ok(Running {
            ctx: None,
            server,
            shutdown,
            threads,
            stage_stats,
            worker_stats,
            stage_endpoints: Vec::new(),
        })
    }
}

/// A running pipeline.
pub struct Running {
    /// The zmq context everything shares (for extra inproc peers); `None` for in-memory stages.
    pub ctx: Option<Context>,
    /// The server core: submit requests here or serve a client protocol over it.
    pub server: Server,
    /// Stops everything.
    pub shutdown: Shutdown,
    threads: Vec<JoinHandle<()>>,
    /// Each stage's counters (its proxy's, or its in-memory queue's).
    pub stage_stats: Vec<Arc<StageStats>>,
    /// Each stage's workers' counters.
    pub worker_stats: Vec<Vec<Arc<WorkerStats>>>,
    /// Each stage's proxy endpoints as bound: (upstream, downstream); empty for in-memory
    /// stages.
    pub stage_endpoints: Vec<(Endpoint, Endpoint)>,
}

impl Running {
    /// Stops every part and waits for every thread.
    pub fn stop(self) {
        self.shutdown.stop();
        self.join();
    }

    /// Waits for every thread (after the shutdown handle stops); a thread that panicked is
    /// reported.
    pub fn join(self) {
        self.server.join();
        for t in self.threads {
            component::join(t);
        }
    }
}
