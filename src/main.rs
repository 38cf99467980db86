//! The `nextbest` command line: parses arguments, sets up logging, and calls
//! into the library. Nothing else lives here.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nextbest::config::Config;
use nextbest::features::FeatureSet;
use nextbest::model::registry::{parse_version, ModelStatus, Registry};
use nextbest::model::scorer::{LoadOptions, LoadedModel};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "nextbest",
    version,
    about = "Real-time next-best-action server"
)]
struct Cli {
    /// Config file (default: $NEXTBEST_CONFIG, else ./nextbest.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (and the Kafka consumer when brokers are configured).
    Serve,
    /// Load event history into the online store (not implemented yet).
    Backfill {
        #[arg(long, num_args = 1..)]
        events: Vec<PathBuf>,
    },
    /// Write point-in-time training rows for labelled decision moments.
    ExportTraining {
        /// Event files (JSON Lines, one event per line).
        #[arg(long, num_args = 1.., required = true)]
        events: Vec<PathBuf>,
        /// Labels CSV: customer_id,item_id,ts,label[,session_id][,context.*].
        #[arg(long)]
        labels: PathBuf,
        /// Output CSV.
        #[arg(long)]
        out: PathBuf,
    },
    /// Model tools.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Validate a models folder, one model, or one version folder.
    Check { dir: PathBuf },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // human-readable on a terminal, JSON lines otherwise (log shippers)
    if std::io::stdout().is_terminal() {
        builder.compact().init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(async {
                let app = nextbest::app::App::build(cfg).await?;
                println!("{}", app.summary());
                println!(
                    "  try:      curl -s -X POST {url}/v1/events -H 'content-type: application/json' -d '{{\"event_id\":\"e-1\",\"type\":\"add_to_cart\",\"customer_id\":\"c42\",\"ts\":'$(date +%s000)',\"item_id\":\"p7\",\"props\":{{\"price\":59.9,\"category\":\"shoes\"}}}}'\n            curl -s -X POST {url}/v1/recommend -H 'content-type: application/json' -d '{{\"customer_id\":\"c42\",\"k\":5,\"candidates\":[\"p1\",\"p7\",\"p9\"]}}'",
                    url = format!("http://127.0.0.1:{}", app.port())
                );
                app.run_until_stopped(nextbest::app::shutdown_signal()).await?;
                anyhow::Ok(())
            })
        }
        Command::Backfill { .. } => {
            bail!("`nextbest backfill` is not implemented yet; use POST /v1/events or Kafka to load events")
        }
        Command::ExportTraining {
            events,
            labels,
            out,
        } => {
            let set = Arc::new(FeatureSet::load(&cfg.features)?);
            let t = std::time::Instant::now();
            let s = nextbest::backfill::export::export_training(set, &events, &labels, &out)?;
            eprintln!(
                "export-training: {} events replayed, {} rows × {} features written to {} in {:.1} s",
                s.events,
                s.rows,
                s.columns,
                out.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Models {
            command: ModelsCommand::Check { dir },
        } => models_check(&cfg, &dir),
    }
}

fn models_check(cfg: &Config, dir: &Path) -> anyhow::Result<()> {
    let set = FeatureSet::load(&cfg.features)?;
    let opts = LoadOptions {
        sessions: 1,
        intra_threads: 1,
        ort_dylib_path: cfg.ort_dylib_path.clone(),
    };
    nextbest::model::runtime::environment(cfg.ort_dylib_path.as_deref())?;
    if dir.join("model.toml").exists() || dir.join("model.onnx").exists() {
        let m = LoadedModel::load(dir, None, &set, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "ok: {} ({} inputs) in {}",
            m.id(),
            m.manifest.inputs.len(),
            dir.display()
        );
        return Ok(());
    }
    let is_model_dir = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .any(|e| e.file_name().to_str().and_then(parse_version).is_some());
    let (root, only) = if is_model_dir {
        (
            dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
            dir.file_name().and_then(|n| n.to_str()).map(str::to_string),
        )
    } else {
        (dir.to_path_buf(), None)
    };
    let reg = Registry::scan(&root, &set, &opts);
    let mut failures = reg.problems.clone();
    let mut checked = 0;
    for (name, entry) in &reg.models {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        for v in &entry.versions {
            checked += 1;
            match v.status {
                ModelStatus::Rejected => {
                    let reason = v.reason.clone().unwrap_or_default();
                    println!("REJECTED {name}/{}: {reason}", v.version);
                    failures.push(format!("{name}/{}: {reason}", v.version));
                }
                ModelStatus::Serving => println!("ok: {name}/{} (would serve)", v.version),
                ModelStatus::Pinned => println!("ok: {name}/{} (loaded)", v.version),
                ModelStatus::Standby => println!(
                    "ok: {name}/{} (manifest valid; a higher version serves)",
                    v.version
                ),
            }
        }
    }
    if checked == 0 {
        bail!("no model versions found under {}", dir.display());
    }
    if !failures.is_empty() {
        bail!("{} problem(s): {}", failures.len(), failures.join("; "));
    }
    Ok(())
}
