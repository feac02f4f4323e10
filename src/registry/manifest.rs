//! What a published version is: its artifacts (with sha256 and size) and its provenance —
//! base weights, dataset, recipe, metrics, code, hardware, timings, licences. The manifest is the
//! root of trust: every artifact read is checked against it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::records::licence::Licence;

/// Current manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(example = json!({"format": 1, "model": "flowers102", "version": 1, "created_at": "2026-11-28T03:20:00Z",
    "upload_id": "6c1f…", "artifacts": [{"name": "model.onnx", "path": "models/flowers102/uploads/6c1f…/model.onnx",
    "sha256": "…", "size": 9080090, "media_type": "application/onnx"}],
    "provenance": {"base_weights": {"catalog": "MobileNet_V2_Weights.IMAGENET1K_V1", "arch": "mobilenet_v2",
        "url": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth", "sha256": "b0353104…",
        "licences": [{"component": "weights", "spdx": null, "url": "https://image-net.org/download.php",
                      "commercial_use": false, "terms": "ImageNet: non-commercial research and educational use"}]},
        "dataset": {"digest": "e878390a…", "name": "Oxford Flowers 102", "class_names": ["pink primrose"],
                    "counts": {"train": 6149, "val": 2040}, "terms": "research use", "licences": []},
        "recipe": {}, "hyperparameters": {}, "metrics": {"best": {"val_top1": 0.9544}, "per_epoch": []},
        "code": {"petal_version": "0.1.0"}, "hardware": {}, "timings": {"run_s": 4700.0},
        "command": "petal finetune --data flowers102 --backbone mobilenet_v2 --cached-features"}}))]
pub struct Manifest {
    pub format: u32,
    pub model: String,
    pub version: u64,
    pub created_at: String,
    /// The upload this version's artifacts were written under (`models/{model}/uploads/{id}/`).
    pub upload_id: String,
    pub artifacts: Vec<Artifact>,
    pub provenance: Provenance,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Artifact {
    /// File name, e.g. `model.onnx`.
    pub name: String,
    /// Object path inside the registry.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub media_type: String,
}

/// Where a model came from and under which terms it may be used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_weights: Option<BaseWeights>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetRecord>,
    /// The recipe (phases, schedules, augmentation) as run.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub recipe: serde_json::Value,
    /// Every hyper-parameter as run.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub hyperparameters: serde_json::Value,
    #[serde(default)]
    pub metrics: Metrics,
    pub code: CodeVersion,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub hardware: serde_json::Value,
    #[serde(default)]
    pub timings: BTreeMap<String, f64>,
    /// The exact command that reproduces this model, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct BaseWeights {
    /// Catalog entry, e.g. `MobileNet_V2_Weights.IMAGENET1K_V1`.
    pub catalog: Option<String>,
    pub arch: String,
    pub url: Option<String>,
    pub sha256: String,
    pub licences: Vec<Licence>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DatasetRecord {
    pub digest: String,
    pub name: String,
    pub class_names: Vec<String>,
    /// Images per split (`train`, `val`).
    pub counts: BTreeMap<String, u64>,
    /// The terms given at upload, verbatim.
    pub terms: Option<String>,
    #[serde(default)]
    pub licences: Vec<Licence>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct Metrics {
    /// The best values (e.g. `val_top1`).
    #[serde(default)]
    pub best: BTreeMap<String, f64>,
    /// One object per epoch.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub per_epoch: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CodeVersion {
    pub petal_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
}

impl Default for CodeVersion {
    fn default() -> Self {
        Self::current()
    }
}

impl CodeVersion {
    pub fn current() -> Self {
        let commit = env!("PETAL_GIT_COMMIT");
        Self {
            petal_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: (!commit.is_empty()).then(|| commit.into()),
        }
    }
}

/// One component of a model's lineage whose terms forbid commercial use.
#[derive(Debug, Clone, PartialEq)]
pub struct Restriction {
    pub component: String,
    pub terms: String,
}

impl Manifest {
    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// Every licence record of the lineage: base weights, then dataset.
    pub fn licences(&self) -> Vec<(String, &Licence)> {
        let p = &self.provenance;
        let weights = p.base_weights.iter().flat_map(|b| {
            b.licences.iter().map(move |l| {
                (format!("base weights {} ({})", b.catalog.as_deref().unwrap_or(&b.arch), l.component), l)
            })
        });
        let dataset = p
            .dataset
            .iter()
            .flat_map(|d| d.licences.iter().map(move |l| (format!("dataset {} ({})", d.name, l.component), l)));
        weights.chain(dataset).collect()
    }

    /// The components whose terms do not allow commercial use.
    pub fn non_commercial(&self) -> Vec<Restriction> {
        let mut out: Vec<Restriction> = self
            .licences()
            .into_iter()
            .filter(|(_, l)| !l.commercial_use)
            .map(|(component, l)| Restriction { component, terms: l.terms.clone() })
            .collect();
        if let Some(d) = &self.provenance.dataset {
            // Terms given at upload without a structured licence: not known to allow commercial use.
            if d.licences.is_empty() {
                if let Some(terms) = &d.terms {
                    out.push(Restriction { component: format!("dataset {}", d.name), terms: terms.clone() });
                }
            }
        }
        out
    }

    /// A model card in Markdown.
    ///
    /// Long on purpose: the card's sections in the order a reader meets them, as a template.
    pub fn card(&self) -> String {
        let p = &self.provenance;
        let mut s = format!("# {} — version {}\n\n", self.model, self.version);
        s += &format!("Published {} by petal {}", self.created_at, p.code.petal_version);
        if let Some(c) = &p.code.git_commit {
            s += &format!(" (commit {c})");
        }
        s += ".\n\n";
        let restricted = self.non_commercial();
        if !restricted.is_empty() {
            let parts: Vec<String> = restricted.iter().map(|r| md_text(&r.component)).collect();
            s += &format!(
                "**Use:** non-commercial only, because of the terms of {} (see Licences and terms below).\n\n",
                parts.join(" and ")
            );
        }
        if let Some(b) = &p.base_weights {
            s += &format!(
                "## Base model\n\n`{}` from {} (sha256 `{}`){}.\n\n",
                b.arch,
                b.catalog.as_deref().unwrap_or("an imported file"),
                b.sha256,
                b.url.as_ref().map(|u| format!(", {u}")).unwrap_or_default()
            );
        }
        if let Some(d) = &p.dataset {
            s += &format!(
                "## Dataset\n\n**{}** (digest `{}`), {} classes",
                md_text(&d.name),
                md_text(&d.digest),
                d.class_names.len()
            );
            let counts: Vec<String> = d.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            if !counts.is_empty() {
                s += &format!("; {} images", counts.join(", "));
            }
            s += ".\n";
            if let Some(t) = &d.terms {
                s += &format!("\nTerms given at upload: {}\n", md_text(t));
            }
            s += "\n";
        }
        if !p.metrics.best.is_empty() {
            s += "## Metrics\n\n| metric | best |\n| --- | --- |\n";
            for (k, v) in &p.metrics.best {
                s += &format!("| {k} | {} |\n", metric_text(*v));
            }
            s += &format!("\n{} epochs recorded.\n\n", p.metrics.per_epoch.len());
            s += &epoch_table(&p.metrics.per_epoch);
        }
        if !p.recipe.is_null() {
            s += &format!(
                "## Recipe\n\n```json\n{}\n```\n\n",
                serde_json::to_string_pretty(&p.recipe).unwrap_or_default()
            );
        }
        if let Some(cmd) = &p.command {
            s += &format!("## Reproduce\n\n```sh\n{}\n```\n\n", without_machine_paths(cmd));
        }
        if !p.hardware.is_null() || !p.timings.is_empty() {
            s += "## Hardware and timings\n\n";
            if !p.hardware.is_null() {
                s += &format!("Hardware: `{}`\n\n", p.hardware);
            }
            for (k, v) in &p.timings {
                s += &format!("- {k}: {v:.1} s\n");
            }
            s += "\n";
        }
        s += "## Licences and terms\n\n";
        let licences = self.licences();
        if licences.is_empty() {
            s += "No licence records.\n";
        }
        for (component, l) in licences {
            s += &format!(
                "- **{}**: {}{} {}\n",
                md_text(&component),
                l.spdx.as_deref().map(|x| format!("{x}. ")).unwrap_or_default(),
                if l.commercial_use { "Commercial use allowed." } else { "Non-commercial use only." },
                md_text(&l.terms)
            );
        }
        s += &self.evaluation_links();
        s += "\n## Artifacts\n\n| file | size | sha256 |\n| --- | --- | --- |\n";
        for a in &self.artifacts {
            s += &format!("| {} | {} | `{}` |\n", a.name, a.size, a.sha256);
        }
        s
    }

    /// Links to the version's evaluation report and pictures, where it has them (the card's
    /// metrics above carry the report's summary).
    fn evaluation_links(&self) -> String {
        let (model, v) = (&self.model, self.version);
        let links: Vec<String> = [
            ("evaluation.json", "evaluation report (validation images)", "evaluation"),
            ("evaluation-test.json", "evaluation report (test/ images)", "evaluation?split=test"),
            ("curves.png", "training curves", "curves.png"),
            ("confusion.png", "confusion matrix (heat map)", "confusion.png"),
        ]
        .iter()
        .filter(|(file, _, _)| self.artifact(file).is_some())
        .map(|(file, what, route)| format!("- [{what}](/models/{model}/versions/{v}/{route}) (`{file}`)\n"))
        .collect();
        if links.is_empty() {
            String::new()
        } else {
            format!("\n## Evaluation\n\n{}", links.concat())
        }
    }
}

/// A metric for the card: counts (epochs, phases) as integers, measures with four decimals.
fn metric_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}

/// A recorded command line for the card, without the absolute paths of the machine it ran on:
/// `/work/runs/flowers` reads `…/flowers` (the manifest keeps the command as recorded).
fn without_machine_paths(command: &str) -> String {
    command
        .split(' ')
        .map(|word| match word.strip_prefix('/') {
            Some(path) if !path.is_empty() => format!("…/{}", path.rsplit('/').next().unwrap_or(path)),
            _ => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// User text (a dataset's name, its terms) as inline Markdown that stays text: on one line (it
/// cannot start a heading or a section of its own), with every character Markdown or HTML gives a
/// meaning escaped (no emphasis, links, tables, code or raw HTML).
pub fn md_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\u{2028}' | '\u{2029}' => out.push(' '),
            c if c.is_control() => {}
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '!' | '|' | '~' | '#' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The per-epoch curve as a Markdown table, for epochs recorded by petal's trainer (others are
/// left out of the card; they stay in the manifest).
fn epoch_table(epochs: &[serde_json::Value]) -> String {
    let num = |e: &serde_json::Value, k: &str| e.get(k).and_then(serde_json::Value::as_f64);
    let rows: Vec<String> = epochs
        .iter()
        .filter_map(|e| {
            let (phase, epoch) = (num(e, "phase")?, num(e, "epoch")?);
            let (train_loss, val_loss, val_acc) = (num(e, "train_loss")?, num(e, "val_loss")?, num(e, "val_accuracy")?);
            let best =
                if e.get("best").and_then(serde_json::Value::as_bool) == Some(true) { " (best so far)" } else { "" };
            Some(format!("| {phase} | {epoch} | {train_loss:.4} | {val_loss:.4} | {:.2} %{best} |\n", val_acc * 100.0))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = "| phase | epoch | train loss | val loss | val top-1 |\n| --- | --- | --- | --- | --- |\n".to_string();
    s.extend(rows);
    s + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1 of model `m`, with no artifacts and this provenance.
    fn version_of(provenance: Provenance) -> Manifest {
        Manifest {
            format: 1,
            model: "m".into(),
            version: 1,
            created_at: "2026-12-02T00:00:00Z".into(),
            upload_id: "u".into(),
            artifacts: Vec::new(),
            provenance,
        }
    }

    #[test]
    fn the_card_shows_counts_as_integers_and_no_machine_paths() {
        assert_eq!(metric_text(6.0), "6");
        assert_eq!(metric_text(0.95441), "0.9544");
        assert_eq!(
            without_machine_paths("petal finetune --data /home/u/data/flowers --out runs/x --seed 0"),
            "petal finetune --data …/flowers --out runs/x --seed 0"
        );
        let mut m =
            version_of(Provenance { command: Some("petal finetune --out /tmp/run".into()), ..Default::default() });
        m.provenance.metrics.best.insert("best_epoch".into(), 6.0);
        let card = m.card();
        assert!(card.contains("| best_epoch | 6 |") && card.contains("--out …/run"), "{card}");
        assert!(!card.contains("/tmp/"), "{card}");
        assert!(!card.contains("## Evaluation"), "no evaluation, no links: {card}");
        for name in ["evaluation.json", "confusion.png"] {
            let a = Artifact {
                name: name.into(),
                path: format!("models/m/uploads/u/{name}"),
                sha256: String::new(),
                size: 1,
                media_type: String::new(),
            };
            m.artifacts.push(a);
        }
        let card = m.card();
        assert!(card.contains("- [evaluation report (validation images)](/models/m/versions/1/evaluation)"), "{card}");
        assert!(card.contains("(/models/m/versions/1/confusion.png)") && !card.contains("curves.png"), "{card}");
    }

    /// A dataset's name reaches the licence lines as part of a component's name: it stays text
    /// there too (no link, emphasis or markup of the uploader's).
    #[test]
    fn licence_lines_escape_the_dataset_name() {
        let licence = Licence {
            component: "images".into(),
            spdx: Some("CC-BY-4.0".into()),
            url: String::new(),
            commercial_use: true,
            terms: "CC BY 4.0".into(),
        };
        let dataset = DatasetRecord {
            digest: "d".into(),
            name: "x [link](http://evil.example) <b>b</b>".into(),
            class_names: Vec::new(),
            counts: BTreeMap::new(),
            terms: None,
            licences: vec![licence],
        };
        let m = version_of(Provenance { dataset: Some(dataset), ..Default::default() });
        let card = m.card();
        let line = card.lines().find(|l| l.starts_with("- **dataset")).expect("the dataset's licence line");
        assert!(!line.contains("[link](") && !line.contains("<b>"), "{line}");
        assert!(line.contains("\\[link\\]") && line.contains("&lt;b&gt;"), "{line}");
    }
}
