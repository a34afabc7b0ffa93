//! The models one demo server serves and what they compute: every model takes `INPUT0` (FP32,
//! FP64, INT32 or INT64, any shape) and answers `OUTPUT0` = `INPUT0` × 2, same datatype and
//! shape, whatever the protocol the request came in.

use std::fmt;
use std::str::FromStr;

use super::tensor::{DataType, Tensor, TensorError};

/// The model's only input.
pub const INPUT: &str = "INPUT0";
/// The model's only output.
pub const OUTPUT: &str = "OUTPUT0";
/// The platform the metadata reports.
pub const PLATFORM: &str = "demo";

/// One served model version, written `NAME[:VERSION]` on the command line (version `1` when
/// omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The model's name (`ranker`).
    pub name: String,
    /// Its version (`2`).
    pub version: String,
}

impl FromStr for ModelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, version) = s.split_once(':').unwrap_or((s, "1"));
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !valid(name) || !valid(version) {
            return Err(format!(
                "{s:?} is not NAME[:VERSION] (letters, digits, '-', '_' and '.')"
            ));
        }
        Ok(ModelSpec {
            name: name.to_owned(),
            version: version.to_owned(),
        })
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.version)
    }
}

/// What a demo server serves: its instance name and its model versions.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The instance name every answer carries (`ranker-v2-a`).
    pub instance: String,
    /// The served model versions, in command-line order.
    pub models: Vec<ModelSpec>,
}

/// A model (or model version) the server does not serve; the message says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownModel(pub String);

impl fmt::Display for UnknownModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Catalog {
    /// The served version `version` of model `name`, or without a version (`None` or empty)
    /// its latest: the highest number, else the last one given.
    ///
    /// # Errors
    ///
    /// When the model, or that version of it, is not served.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<&ModelSpec, UnknownModel> {
        let mut versions = self.models.iter().filter(|m| m.name == name);
        let found = match version.filter(|v| !v.is_empty()) {
            Some(v) => versions.find(|m| m.version == v),
            None => versions.max_by_key(|m| m.version.parse::<u64>().ok()),
        };
        found.ok_or_else(|| {
            let what = match version.filter(|v| !v.is_empty()) {
                Some(v) => format!("model {name:?} version {v:?}"),
                None => format!("model {name:?}"),
            };
            UnknownModel(format!(
                "{what} is not served by instance {:?} (it serves {})",
                self.instance,
                self.served()
            ))
        })
    }

    /// Every version served of model `name`, in command-line order.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.models
            .iter()
            .filter(|m| m.name == name)
            .map(|m| m.version.clone())
            .collect()
    }

    /// The served models as `name:version, ...`.
    pub fn served(&self) -> String {
        let all: Vec<String> = self.models.iter().map(ToString::to_string).collect();
        all.join(", ")
    }
}

/// One input or output of the signature the metadata reports (`-1`: any size).
#[derive(Debug, Clone, Copy)]
pub struct TensorSignature {
    /// `INPUT0` or `OUTPUT0`.
    pub name: &'static str,
    /// The datatype reported (any of [`DataType::ALL`] is accepted; the output follows the
    /// input).
    pub datatype: DataType,
    /// `[-1]`.
    pub shape: &'static [i64],
}

/// The model's inputs and outputs as metadata reports them.
pub const SIGNATURE: [TensorSignature; 2] = [
    TensorSignature {
        name: INPUT,
        datatype: DataType::Fp32,
        shape: &[-1],
    },
    TensorSignature {
        name: OUTPUT,
        datatype: DataType::Fp32,
        shape: &[-1],
    },
];

/// Runs the model: `OUTPUT0` = `INPUT0` × 2. `requested` are the outputs the request names
/// (none: every output).
///
/// # Errors
///
/// When `INPUT0` is missing or given twice, another input is given, or an output other than
/// `OUTPUT0` is requested.
pub fn infer(inputs: &[Tensor], requested: &[String]) -> Result<Vec<Tensor>, TensorError> {
    if let Some(other) = inputs.iter().find(|t| t.name != INPUT) {
        return Err(TensorError(format!(
            "unknown input {:?}; the model takes one input, {INPUT}",
            other.name
        )));
    }
    let input = match inputs {
        [one] => one,
        [] => return Err(TensorError(format!("input {INPUT} is missing"))),
        _ => {
            return Err(TensorError(format!(
                "input {INPUT} is given more than once"
            )));
        }
    };
    if let Some(other) = requested.iter().find(|name| *name != OUTPUT) {
        return Err(TensorError(format!(
            "unknown output {other:?}; the model has one output, {OUTPUT}"
        )));
    }
    let output = Tensor {
        name: OUTPUT.to_owned(),
        shape: input.shape.clone(),
        data: input.data.doubled(),
    };
    Ok(vec![output])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo_model::tensor::Elements;

    fn catalog(models: &[&str]) -> Catalog {
        Catalog {
            instance: "a".into(),
            models: models.iter().map(|m| m.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_model_spec_defaults_to_version_1() {
        let spec: ModelSpec = "ranker".parse().unwrap();
        assert_eq!((spec.name.as_str(), spec.version.as_str()), ("ranker", "1"));
        let spec: ModelSpec = "ranker:2".parse().unwrap();
        assert_eq!(spec.to_string(), "ranker:2");
        assert!("ranker:".parse::<ModelSpec>().is_err());
        assert!("a b".parse::<ModelSpec>().is_err());
    }

    #[test]
    fn a_model_is_found_by_name_and_version_or_its_latest() {
        let c = catalog(&["ranker:2", "ranker:10", "demo"]);
        assert_eq!(c.find("ranker", None).unwrap().version, "10");
        assert_eq!(c.find("ranker", Some("")).unwrap().version, "10");
        assert_eq!(c.find("ranker", Some("2")).unwrap().version, "2");
        assert_eq!(c.versions("ranker"), ["2", "10"]);
        let err = c.find("ranker", Some("3")).unwrap_err();
        assert_eq!(
            err.0,
            "model \"ranker\" version \"3\" is not served by instance \"a\" (it serves ranker:2, ranker:10, demo:1)"
        );
        assert!(c.find("nope", None).is_err());
    }

    #[test]
    fn the_model_doubles_its_input() {
        let input = Tensor::new("INPUT0".into(), vec![1, 2], Elements::Int32(vec![1, -2])).unwrap();
        let out = infer(&[input], &[]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "OUTPUT0");
        assert_eq!(out[0].shape, [1, 2]);
        assert_eq!(out[0].data, Elements::Int32(vec![2, -4]));
    }

    #[test]
    fn wrong_inputs_and_outputs_are_named() {
        let x = Tensor::new("X".into(), vec![1], Elements::Fp32(vec![1.0])).unwrap();
        assert!(
            infer(&[x], &[])
                .unwrap_err()
                .0
                .contains("unknown input \"X\"")
        );
        assert!(infer(&[], &[]).unwrap_err().0.contains("INPUT0 is missing"));
        let input = Tensor::new("INPUT0".into(), vec![1], Elements::Fp32(vec![1.0])).unwrap();
        let err = infer(&[input], &["OUT".into()]).unwrap_err();
        assert!(err.0.contains("unknown output \"OUT\""), "{err}");
    }
}
