//! `atelier models import | inspect | list`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use atelier_nets::import::{import, ImportHints};
use atelier_nets::{ModelCard, NormKind, Storage};

use crate::cli::{Global, ImportArgs, ModelsCommand};

pub fn run(global: &Global, cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelsCommand::Import(args) => import_cmd(global, *args),
        ModelsCommand::Inspect { model } => {
            let card = global.model_card(&model)?;
            let params = card.arch.parameter_count()?;
            println!("{}", serde_json::to_string_pretty(&card)?);
            println!("parameters: {params}");
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::List => {
            let names = atelier_nets::file::model_names(&global.models_dir);
            let metric = |card: &ModelCard| {
                card.metrics
                    .get("kid_x100")
                    .map(|k| format!("KID×100 {k:.2}"))
                    .unwrap_or_else(|| "no KID".into())
            };
            println!(
                "{:<24} {:<22} {:<14} DESCRIPTION",
                "NAME", "ARCHITECTURE", "QUALITY"
            );
            for name in &names {
                let path = global.models_dir.join(format!("{name}.safetensors"));
                match atelier_nets::file::read_card(&path) {
                    Ok(card) => println!(
                        "{name:<24} {:<22} {:<14} {}",
                        card.arch.name(),
                        metric(&card),
                        card.description
                    ),
                    Err(e) => println!("{name:<24} (unreadable: {e})"),
                }
            }
            // The styles compiled into the binary (what `atelier serve` shows in its gallery),
            // unless a file of the same name in the models folder takes their place.
            for (name, title, bytes) in atelier_jobs::builtin::EMBEDDED {
                if names.iter().any(|n| n == name) {
                    continue;
                }
                let path = Path::new(name);
                let card = atelier_nets::file::parse_safetensors(bytes)
                    .map_err(|reason| anyhow::anyhow!("built-in model {name}: {reason}"))
                    .and_then(|(_, meta)| {
                        Ok(atelier_nets::file::card_from_metadata(path, meta.as_ref())?)
                    })?;
                println!(
                    "{name:<24} {:<22} {:<14} built-in \"{title}\": {}",
                    card.arch.name(),
                    metric(&card),
                    card.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The SHA-256 of a file, as lowercase hex.
fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn import_cmd(global: &Global, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let norm = match &args.norm {
        Some(n) => Some(
            NormKind::parse(n)
                .with_context(|| format!("--norm must be instance, batch or none, not `{n}`"))?,
        ),
        None => None,
    };
    let hints = ImportHints {
        net_g: args.net_g.clone(),
        net_d: args.net_d.clone(),
        ngf: args.ngf,
        ndf: args.ndf,
        n_layers_d: args.n_layers_d,
        norm,
        no_dropout: args.no_dropout.then_some(true),
        input_nc: args.input_nc,
        output_nc: args.output_nc,
    };
    let imported = import(&args.checkpoint, &hints)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.checkpoint
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "imported".into())
    });
    let mut card = ModelCard::new(name.clone(), imported.arch);
    card.description = args.description.clone();
    card.provenance.source = "imported from a pytorch-CycleGAN-and-pix2pix checkpoint".into();
    card.provenance.original_file = args
        .checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().to_string());
    card.provenance.original_sha256 = Some(sha256_hex(&args.checkpoint)?);
    card.provenance.created = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    card.data.description = args.data.clone();
    card.data.licence = args.data_licence.clone();
    card.license = args.license.clone();
    card.input.train_size = args.train_size;
    card.inference.batch_stats = args.batch_stats;
    card.notes = imported.notes.clone();
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| global.models_dir.join(format!("{name}.safetensors")));
    let storage = if args.fp16 {
        Storage::F16
    } else {
        Storage::F32
    };
    atelier_nets::save(&out, &card, &imported.tensors, storage)?;
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    eprintln!(
        "imported {} ({}, {} parameters) -> {}",
        args.checkpoint.display(),
        imported.arch.name(),
        imported.arch.parameter_count()?,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
