//! Decode throughput of several sequences on one model: `CpuModel::step` with every sequence's
//! decode in one step (each weight row read once for all of them where the kernel allows)
//! against the same sequences decoded one after the other, and a check that both give the same
//! logits bit for bit.
//!
//!   batch_decode <model dir> [sequences] [steps]     (defaults 8 and 32)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mlxk_fs::engine::args::ModelArgs;
use mlxk_fs::engine::model::{CpuModel, Sequence};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: batch_decode <model dir> [sequences] [steps]");
        return ExitCode::from(2);
    };
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let model = match ModelArgs::load(&dir).and_then(|a| CpuModel::load_with(&dir, a)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("batch_decode: {e}");
            return ExitCode::FAILURE;
        }
    };
    let vocab = model.args().vocab as u32;
    // Different prompts of 16 tokens; each sequence then decodes its own fixed token stream.
    let prompt = |s: usize| -> Vec<u32> {
        (0..16)
            .map(|i| (s as u32 * 131 + i * 7 + 1) % vocab)
            .collect()
    };
    let token = |s: usize, step: usize| (s as u32 * 17 + step as u32 * 29 + 3) % vocab;
    let fresh = || -> Vec<Sequence> {
        (0..n)
            .map(|s| {
                let mut seq = Sequence::new(&model);
                seq.reserve(16 + steps + 1);
                model.forward(&mut seq, &prompt(s)).expect("prefill");
                seq
            })
            .collect()
    };
    // One after the other.
    let mut alone = fresh();
    let started = Instant::now();
    for step in 0..steps {
        for (s, seq) in alone.iter_mut().enumerate() {
            model.forward(seq, &[token(s, step)]).expect("decode");
        }
    }
    let alone_s = started.elapsed().as_secs_f64();
    // Together.
    let mut together = fresh();
    let started = Instant::now();
    for step in 0..steps {
        let tokens: Vec<[u32; 1]> = (0..n).map(|s| [token(s, step)]).collect();
        let mut work: Vec<(&mut Sequence, &[u32])> = together
            .iter_mut()
            .zip(&tokens)
            .map(|(seq, t)| (seq, &t[..]))
            .collect();
        model.step(&mut work).expect("step");
    }
    let together_s = started.elapsed().as_secs_f64();
    let same = alone
        .iter()
        .zip(&together)
        .all(|(a, b)| model.logits(a) == model.logits(b));
    let tokens = (n * steps) as f64;
    println!(
        "{n} sequences x {steps} decode steps: one after the other {:.1} tok/s, in one step {:.1} tok/s ({:.2}x); logits identical: {same}",
        tokens / alone_s,
        tokens / together_s,
        alone_s / together_s
    );
    if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
