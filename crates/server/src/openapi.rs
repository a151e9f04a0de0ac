//! The OpenAPI 3.1 document, generated from the same table that builds the router
//! ([`crate::operations`]), so a route cannot exist undocumented or be documented without
//! existing. A committed snapshot (`crates/server/openapi.json`) is compared by a test;
//! `atelier openapi > crates/server/openapi.json` rewrites it.

use serde_json::{json, Map, Value};

/// Where a parameter goes.
#[derive(Debug, Clone, Copy)]
pub enum In {
    Path,
    Query,
}

/// One parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub at: In,
    /// JSON schema type (`string`, `integer`, `number`, `boolean`), or a whole schema as JSON
    /// text (`{"type": "string", "enum": [...]}`).
    pub ty: &'static str,
    pub required: bool,
    pub description: &'static str,
}

/// A request body.
#[derive(Debug, Clone, Copy)]
pub enum ReqBody {
    None,
    /// Raw bytes of one of these media types (an image, a model file).
    Bytes(&'static str, &'static str),
    /// JSON of a named schema.
    Json(&'static str),
    /// `multipart/form-data` with these `(part, description)`s.
    Multipart(&'static [(&'static str, &'static str)]),
    /// Either raw bytes or multipart.
    BytesOrMultipart(&'static str, &'static [(&'static str, &'static str)]),
    /// JSON of a schema, or multipart parts.
    JsonOrMultipart(&'static str, &'static [(&'static str, &'static str)]),
}

/// A success answer.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// JSON of a named schema.
    Json(u16, &'static str),
    /// Bytes of a media type.
    Bytes(u16, &'static str),
    Text(u16),
    Empty(u16),
    EventStream,
}

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    pub params: &'static [Param],
    pub body: ReqBody,
    pub answer: Answer,
    /// Error codes this operation may answer besides `unauthorized`, `rate_limited`, `internal`.
    pub errors: &'static [&'static str],
    /// Needs a caller (a key, or open mode).
    pub auth: bool,
}

pub const fn q(name: &'static str, ty: &'static str, description: &'static str) -> Param {
    Param {
        name,
        at: In::Query,
        ty,
        required: false,
        description,
    }
}
pub const fn q_req(name: &'static str, ty: &'static str, description: &'static str) -> Param {
    Param {
        name,
        at: In::Query,
        ty,
        required: true,
        description,
    }
}
pub const fn p(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        at: In::Path,
        ty: "string",
        required: true,
        description,
    }
}

fn status_of(code: &str) -> u16 {
    match code {
        "unauthorized" => 401,
        "rate_limited" | "quota_exceeded" | "overloaded" => 429,
        "payload_too_large" | "image_too_large" | "storage_quota_exceeded" => 413,
        "request_timeout" => 408,
        "method_not_allowed" => 405,
        "unsupported_image_format" => 415,
        "invalid_model_file" | "invalid_archive" | "model_cannot_stylize" => 422,
        "name_taken" | "name_reserved" | "conflict" => 409,
        "internal" => 500,
        "storage_full" => 507,
        "not_ready" | "no_models" | "busy" => 503,
        c if c.ends_with("not_found") => 404,
        _ => 400,
    }
}

fn schemas() -> Value {
    let error = json!({
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "description": "Stable machine-readable code."},
            "message": {"type": "string", "description": "One human-readable line."}}}}
    });
    let model = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
            "owner": {"type": "string"},
            "visibility": {"type": "string", "enum": ["builtin", "public", "private"]},
            "mine": {"type": "boolean"}, "arch": {"type": "string"},
            "role": {"type": "string", "enum": ["translator", "noise generator", "discriminator"]},
            "can_stylize": {"type": "boolean"}, "train_size": {"type": ["integer", "null"]},
            "parameters": {"type": ["integer", "null"]}, "size_bytes": {"type": "integer"},
            "created": {"type": "integer"}, "job": {"type": ["string", "null"]},
            "thumbnail_url": {"type": "string"}, "file_url": {"type": "string"},
            "card": {"type": "object", "description": "The whole model card (details only)."},
            "samples": {"type": "array", "items": {"type": "object"}, "description": "Sample images (details only)."}
        }
    });
    let dataset = json!({
        "type": "object",
        "properties": {
            "id": {"type": "string"}, "owner": {"type": "string"}, "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["unpaired", "paired", "single"]},
            "count_a": {"type": "integer"}, "count_b": {"type": "integer"}, "bytes": {"type": "integer"},
            "skipped": {"type": "array", "items": {"type": "object", "properties": {
                "file": {"type": "string"}, "reason": {"type": "string"}}}},
            "created": {"type": "integer"}
        }
    });
    let job = json!({
        "type": "object",
        "properties": {
            "id": {"type": "string"}, "type": {"type": "string", "enum": ["stylize", "train"]},
            "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
            "created": {"type": "integer"}, "updated": {"type": "integer"},
            "finished": {"type": ["integer", "null"]}, "attempts": {"type": "integer"},
            "cancel_requested": {"type": "boolean"},
            "progress": {"type": "object", "description": "Training: step, total, fraction, epoch, images_per_s, eta_s, lr, losses {name: value}, warning, sample_step, checkpoint_step, model. Stylize: done, total, fraction, errors."},
            "spec": {"$ref": "#/components/schemas/JobSpec"},
            "error": {"type": ["string", "null"]},
            "results": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "url": {"type": "string"}}}},
            "model": {"type": ["string", "null"], "description": "Training: the model it makes (its final name once succeeded)."}
        }
    });
    let train = json!({
        "type": "object", "required": ["type", "dataset", "name"],
        "properties": {
            "type": {"const": "train"},
            "dataset": {"type": "string"}, "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
            "family": {"type": "string", "enum": ["fastcut", "cut", "cyclegan", "pix2pix", "dcgan"], "default": "fastcut", "description": "fastcut: one generator, PatchNCE (cheapest per step); cut: with the identity term; cyclegan: two generators and discriminators; pix2pix: paired; dcgan: noise → image. Absent: fastcut, or cyclegan when net_g names a generator other than resnet_*."},
            "init_from": {"type": ["string", "null"], "description": "Start from this style's generator (a built-in or your model); absent: `monet` for the unpaired families unless net_g/ngf are given; null: random weights. Leave net_g and ngf out with it."},
            "steps": {"type": "integer", "default": 2000, "minimum": 1},
            "size": {"type": ["integer", "null"], "default": 128, "minimum": 32, "maximum": 512},
            "net_g": {"type": ["string", "null"], "description": "Default: the init_from model's; else light (CycleGAN), resnet_6blocks_resize (CUT/FastCUT), unet (pix2pix). Also resnet_6blocks, resnet_9blocks, …"},
            "ngf": {"type": ["integer", "null"], "minimum": 1}, "ndf": {"type": ["integer", "null"], "minimum": 1},
            "batch": {"type": ["integer", "null"], "minimum": 1},
            "lr": {"type": ["number", "null"]}, "loss": {"type": ["string", "null"], "enum": ["vanilla", "lsgan", "hinge", null]},
            "precision": {"type": ["string", "null"], "enum": ["f32", "bf16", null], "default": "f32", "description": "bf16: the convolutions multiply in bf16 with f32 sums (as PyTorch's CPU autocast) on workers with AVX512_BF16; f32 elsewhere."},
            "sample_every": {"type": ["integer", "null"], "default": 100, "minimum": 1}, "checkpoint_every": {"type": ["integer", "null"], "default": 200, "minimum": 1},
            "seed": {"type": "integer"}, "description": {"type": "string"}
        }
    });
    let stylize = json!({
        "type": "object", "required": ["type", "model"],
        "properties": {
            "type": {"const": "stylize"}, "model": {"type": "string"},
            "format": {"type": ["string", "null"], "enum": ["jpg", "png", "webp", null]},
            "strength": {"type": "number", "minimum": 0, "maximum": 1, "default": 1},
            "max_side": {"type": ["integer", "null"], "minimum": 1}, "quality": {"type": "integer", "default": 92, "minimum": 1, "maximum": 100}
        }
    });
    json!({
        "Error": error, "Model": model,
        "ModelList": {"type": "object", "properties": {"models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}},
        "Dataset": dataset,
        "DatasetList": {"type": "object", "properties": {"datasets": {"type": "array", "items": {"$ref": "#/components/schemas/Dataset"}}}},
        "Job": job,
        "JobList": {"type": "object", "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}},
        "TrainSpec": train, "StylizeSpec": stylize,
        "TrainEstimate": {"type": "object", "properties": {
            "family": {"type": "string"}, "generator": {"type": "string"},
            "init_from": {"type": ["string", "null"]}, "steps": {"type": "integer"},
            "step_seconds": {"type": "number", "description": "Seconds per training step, measured on this server."},
            "eta_seconds": {"type": "number", "description": "steps × step_seconds (training only)."},
            "warnings": {"type": "array", "items": {"type": "string"}}}},
        "JobSpec": {"oneOf": [{"$ref": "#/components/schemas/TrainSpec"}, {"$ref": "#/components/schemas/StylizeSpec"}], "discriminator": {"propertyName": "type", "mapping": {"train": "#/components/schemas/TrainSpec", "stylize": "#/components/schemas/StylizeSpec"}}},
        "Metrics": {"type": "object", "properties": {"metrics": {"type": "array", "items": {"type": "object"}, "description": "The run's metrics.jsonl lines: step, losses {name: value}, D_real, D_fake, lr, images_per_s, warnings."}}},
        "Me": {"type": "object", "properties": {"owner": {"type": "string"}, "open": {"type": "boolean"}}}
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn multipart(parts: &[(&str, &str)]) -> Value {
    let props: Map<String, Value> = parts
        .iter()
        .map(|(n, d)| {
            (
                n.to_string(),
                json!({"type": "string", "format": "binary", "description": d}),
            )
        })
        .collect();
    json!({"multipart/form-data": {"schema": {"type": "object", "properties": props}}})
}

fn bytes(media: &str, description: &str) -> Value {
    let mut m = Map::new();
    for t in media.split(',') {
        m.insert(
            t.trim().into(),
            json!({"schema": {"type": "string", "format": "binary", "description": description}}),
        );
    }
    Value::Object(m)
}

fn operation(op: &Op) -> Value {
    let params: Vec<Value> = op
        .params
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "in": match p.at { In::Path => "path", In::Query => "query" },
                "required": p.required,
                "description": p.description,
                "schema": if p.ty.starts_with('{') {
                    serde_json::from_str::<Value>(p.ty).expect("a parameter's schema is JSON")
                } else {
                    json!({"type": p.ty})
                },
            })
        })
        .collect();
    let mut o = json!({
        "tags": [op.tag],
        "summary": op.summary,
        "operationId": operation_id(op),
    });
    if !op.description.is_empty() {
        o["description"] = json!(op.description);
    }
    if !params.is_empty() {
        o["parameters"] = json!(params);
    }
    let body = match op.body {
        ReqBody::None => None,
        ReqBody::Bytes(m, d) => Some(bytes(m, d)),
        ReqBody::Json(s) => Some(json!({"application/json": {"schema": schema_ref(s)}})),
        ReqBody::Multipart(parts) => Some(multipart(parts)),
        ReqBody::BytesOrMultipart(m, parts) => {
            let mut b = bytes(m, "the image itself");
            if let (Value::Object(b), Value::Object(mp)) = (&mut b, multipart(parts)) {
                b.extend(mp);
            }
            Some(b)
        }
        ReqBody::JsonOrMultipart(s, parts) => {
            let mut b = json!({"application/json": {"schema": schema_ref(s)}});
            if let (Value::Object(b), Value::Object(mp)) = (&mut b, multipart(parts)) {
                b.extend(mp);
            }
            Some(b)
        }
    };
    if let Some(content) = body {
        o["requestBody"] = json!({"required": true, "content": content});
    }
    let mut responses = Map::new();
    let (code, ok) = match op.answer {
        Answer::Json(c, s) => (
            c,
            json!({"description": "OK", "content": {"application/json": {"schema": schema_ref(s)}}}),
        ),
        Answer::Bytes(c, m) => (
            c,
            json!({"description": "OK", "content": bytes(m, "the file")}),
        ),
        Answer::Text(c) => (
            c,
            json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        ),
        Answer::Empty(c) => (c, json!({"description": "Done"})),
        Answer::EventStream => (
            200,
            json!({"description": "Events `status`, `progress`, `sample`, `end` (data: JSON); a keep-alive comment every 15 s.", "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
        ),
    };
    responses.insert(code.to_string(), ok);
    let mut codes: Vec<&str> = op.errors.to_vec();
    if op.auth {
        codes.extend(["unauthorized", "rate_limited"]);
    }
    codes.push("internal");
    if op.method != "get" {
        codes.extend(["storage_full", "busy"]);
    }
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for c in codes {
        by_status.entry(status_of(c)).or_default().push(c);
    }
    for (status, codes) in by_status {
        responses.insert(
            status.to_string(),
            json!({
                "description": format!("Error; code: {}", codes.join(", ")),
                "content": {"application/json": {"schema": schema_ref("Error")}},
            }),
        );
    }
    o["responses"] = Value::Object(responses);
    if op.auth {
        o["security"] = json!([{"bearer": []}, {}]);
    }
    o
}

/// The document for these operations.
fn operation_id(op: &Op) -> String {
    format!(
        "{}_{}",
        op.method,
        op.path
            .trim_start_matches('/')
            .replace(['/', '{', '}'], "_")
            .trim_end_matches('_')
    )
}

/// OpenAPI links from each operation that creates a resource (`POST P` answering 201/202
/// with JSON) to the operations on it (`P/{x}…`), taking `x` from the answer's field of the
/// same name: clients and schema-driven testers can follow them.
fn add_links(ops: &[Op], paths: &mut Map<String, Value>) {
    for create in ops {
        let status = match create.answer {
            Answer::Json(s @ (201 | 202), _) if create.method == "post" => s,
            _ => continue,
        };
        let mut links = Map::new();
        for target in ops {
            let Some(rest) = target.path.strip_prefix(create.path) else {
                continue;
            };
            let Some(param) = rest
                .strip_prefix("/{")
                .and_then(|r| r.split_once('}'))
                .map(|(p, _)| p)
            else {
                continue;
            };
            // `{file}` of a result is not in the answer; the other parameters must be.
            if target
                .params
                .iter()
                .any(|p| matches!(p.at, In::Path) && p.name != param)
            {
                continue;
            }
            links.insert(
                operation_id(target),
                json!({
                    "operationId": operation_id(target),
                    "parameters": {param: format!("$response.body#/{}", if param == "name" { "name" } else { "id" })},
                }),
            );
        }
        if !links.is_empty() {
            paths[create.path][create.method]["responses"][status.to_string()]["links"] =
                Value::Object(links);
        }
    }
}

pub fn document(ops: &[Op]) -> Value {
    let mut paths = Map::new();
    for op in ops {
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.method] = operation(op);
    }
    add_links(ops, &mut paths);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Atelier API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "GAN image style transfer: stylize images, train styles on your own datasets, share models. Errors are JSON `{\"error\": {\"code\", \"message\"}}` with stable codes. Send `Authorization: Bearer <key>` (`atelier admin create-key`); an open server (the default on 127.0.0.1) also accepts key-less requests as the user `local`. Other keys' datasets, jobs and private models answer 404.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "tags": [
            {"name": "stylize", "description": "Images in, stylized images out."},
            {"name": "models", "description": "Built-in, published and your own models."},
            {"name": "datasets", "description": "Images to train on."},
            {"name": "jobs", "description": "Durable jobs: large images and training runs."},
            {"name": "operations", "description": "Health, readiness, metrics, identity."}
        ],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key `atl_<id>_<secret>`; on GET requests also accepted as `?key=`."}}
        }
    })
}
