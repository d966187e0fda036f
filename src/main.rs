//! The `imagefs` command: `mount`, `check` and `gc`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use imagefs::config::{self, Config};
use imagefs::daemon::{self, Readiness};
use imagefs::fs::{FsOptions, ImageFs, OwnerOverride};
use imagefs::fuse::FuseAdapter;
use imagefs::store::{self, Store};
use imagefs::{admin, mount_opts};

#[derive(Parser)]
#[command(
    name = "imagefs",
    version,
    about = "Every Glance store as one FUSE tree"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone, Default)]
struct ConfigArgs {
    /// imagefs TOML configuration file.
    #[arg(long, value_name = "FILE", conflicts_with = "glance_config")]
    config: Option<PathBuf>,
    /// Read the stores from an existing glance-api.conf instead.
    #[arg(long, value_name = "FILE")]
    glance_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the stores at MOUNTPOINT.
    Mount {
        mountpoint: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
        /// Mount only this store's directory at MOUNTPOINT.
        #[arg(long, value_name = "NAME")]
        store: Option<String>,
        /// Stay in the foreground (for systemd Type=notify/simple).
        #[arg(long, short = 'f')]
        foreground: bool,
        /// Mount options: ro, allow_other, allow_root, default_permissions,
        /// uid=N, gid=N, config=FILE, glance_config=FILE, store=NAME.
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// Write the daemon's PID here.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Where the detached daemon logs (default: nowhere; use
        /// --foreground under systemd for the journal).
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
    },
    /// Check every store: reachable, writable, capacity, latency.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Remove what abandoned uploads left behind in the stores.
    Gc {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only leftovers older than this (e.g. 30m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// List what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMAGEFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn load_config(args: &ConfigArgs) -> Result<Config, String> {
    match (&args.config, &args.glance_config) {
        (Some(p), _) => config::load_toml(p).map_err(|e| e.to_string()),
        (None, Some(p)) => config::import_glance(p).map_err(|e| e.to_string()),
        (None, None) => Ok(config::embedded_default()),
    }
}

/// Opens every configured store; a store whose type is not built yet (or
/// that fails to open) is returned apart, with the reason, and the others
/// still work.
fn open_stores(cfg: &Config) -> (Vec<Arc<dyn Store>>, Vec<String>) {
    let mut stores = Vec::new();
    let mut failed = Vec::new();
    let budget = store::budget::WriteBudget::new(cfg.mount.write_in_flight_mb << 20);
    for s in &cfg.stores {
        match store::open(s, &budget) {
            Ok(st) => stores.push(st),
            Err(e) => failed.push(e),
        }
    }
    (stores, failed)
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(2))
        .thread_name("imagefs-rt")
        .enable_all()
        .build()
}

#[allow(clippy::too_many_arguments)]
fn mount(
    mountpoint: &Path,
    mut cargs: ConfigArgs,
    mut store_name: Option<String>,
    foreground: bool,
    options: &[String],
    pid_file: Option<&Path>,
    log_file: Option<&Path>,
) -> Result<(), String> {
    let opts = mount_opts::parse(options)?;
    if let Some(c) = &opts.config {
        cargs.config = Some(c.clone());
    }
    if let Some(c) = &opts.glance_config {
        cargs.glance_config = Some(c.clone());
    }
    if opts.store.is_some() {
        store_name = opts.store.clone();
    }
    let cfg = load_config(&cargs)?;
    if let Some(name) = &store_name {
        if cfg.store(name).is_none() {
            return Err(format!(
                "--store {name:?}: no such store in the configuration"
            ));
        }
    }
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?;
    let mut ready = if foreground {
        Readiness::foreground()
    } else {
        daemon::detach(log_file).map_err(|e| format!("cannot detach: {e}"))?
    };
    init_logging();
    daemon::report_fatal_signals();
    daemon::limit_malloc_arenas();
    let result = serve(&cfg, &mountpoint, store_name, &opts, pid_file, &mut ready);
    if let Err(e) = &result {
        ready.failed(e);
    }
    result
}

fn serve(
    cfg: &Config,
    mountpoint: &Path,
    store_name: Option<String>,
    opts: &mount_opts::MountOpts,
    pid_file: Option<&Path>,
    ready: &mut Readiness,
) -> Result<(), String> {
    let rt = runtime(cfg.mount.threads).map_err(|e| format!("tokio runtime: {e}"))?;
    let (stores, failed) = open_stores(cfg);
    if stores.is_empty() {
        return Err(format!("no store could be opened: {}", failed.join("; ")));
    }
    for f in &failed {
        ready.warn(&format!("{f}; mounting the other stores"));
    }
    let single_store = match &store_name {
        Some(n) => Some(
            stores
                .iter()
                .position(|s| s.name() == n)
                .ok_or_else(|| format!("store {n:?} could not be opened"))?,
        ),
        None => None,
    };
    let fs = Arc::new(ImageFs::new(
        stores,
        FsOptions {
            attr_ttl: cfg.mount.attr_ttl,
            passthrough: cfg.mount.passthrough,
            read_only: opts.read_only,
            hashing: cfg.mount.checksums.then_some(cfg.mount.hashing_algorithm),
            owner: OwnerOverride {
                uid: opts.uid,
                gid: opts.gid,
            },
            single_store,
        },
    ));
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = opts.fuser_options();
    fuse_cfg.acl = opts.acl;
    fuse_cfg.n_threads = Some(cfg.mount.threads.max(1));
    fuse_cfg.clone_fd = true;
    let mut session = fuser::Session::new(adapter, mountpoint, &fuse_cfg)
        .map_err(|e| format!("mounting {}: {e}", mountpoint.display()))?;
    match daemon::mount_id(mountpoint) {
        Some(id) => fs.set_mount_id(id),
        None => tracing::warn!("mount id not found: every close commits"),
    }
    if let Err(e) = daemon::set_read_ahead(mountpoint, cfg.mount.read_ahead_kb) {
        tracing::warn!("cannot set read_ahead_kb: {e}");
    }
    daemon::spawn_malloc_trim(rt.handle());
    let mut unmounter = session.unmount_callable();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!("unmount failed: {e}");
        }
    });
    if let Some(p) = pid_file {
        daemon::write_pid_file(p).map_err(|e| format!("pid file {}: {e}", p.display()))?;
    }
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    ready.ready();
    let result = session.run();
    rt.block_on(fs.shutdown(Duration::from_secs(10)));
    if let Some(p) = pid_file {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("unmounted, exiting");
    rt.shutdown_timeout(Duration::from_secs(5));
    result.map_err(|e| format!("FUSE session: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Mount {
            mountpoint,
            config,
            store,
            foreground,
            options,
            pid_file,
            log_file,
        } => mount(
            &mountpoint,
            config,
            store,
            foreground,
            &options,
            pid_file.as_deref(),
            log_file.as_deref(),
        ),
        Cmd::Check { config } => {
            init_logging();
            load_config(&config).and_then(|cfg| {
                let (stores, failed) = open_stores(&cfg);
                let rt = runtime(2).map_err(|e| e.to_string())?;
                let rows = rt.block_on(async {
                    let mut rows = Vec::new();
                    for s in &stores {
                        rows.push(admin::check_store(s).await);
                    }
                    rows
                });
                print!("{}", admin::format_table(&rows));
                for f in &failed {
                    println!("{f}");
                }
                if rows.iter().all(|r| r.reachable.is_ok()) && failed.is_empty() {
                    Ok(())
                } else {
                    Err("some stores are not usable".into())
                }
            })
        }
        Cmd::Gc {
            config,
            older_than,
            dry_run,
        } => {
            init_logging();
            load_config(&config).and_then(|cfg| {
                let (stores, failed) = open_stores(&cfg);
                for f in &failed {
                    eprintln!("imagefs: {f}");
                }
                let rt = runtime(2).map_err(|e| e.to_string())?;
                rt.block_on(admin::gc(&stores, older_than, dry_run))
            })
        }
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("imagefs: {e}");
            1
        }
    };
    daemon::exit_now(code)
}
