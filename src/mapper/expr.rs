//! CEL expressions of `expr = '...'` field rules: [`Expr`] is a program compiled once, when
//! the mapping is compiled; [`Scope`] binds one raw record (as `record`) and, inside
//! `[lines]`, one line element (as `line`). Values reach CEL as JSON types: objects are maps,
//! arrays lists, integers `int`.
//!
//! CEL is sandboxed and always terminates, so an expression cannot hang the pipeline. The
//! record is converted to a CEL value at most once per record, however many expressions
//! read it. Results come back as JSON and continue through transforms and coercion like any
//! other source value.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Env, Program};
use serde_json::Value;

/// One compiled expression.
pub struct Expr {
    program: Program,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expr").finish_non_exhaustive()
    }
}

/// The standard CEL environment, shared by every expression of a mapping.
#[derive(Clone)]
pub struct ExprEnv(Arc<Env>);

impl std::fmt::Debug for ExprEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExprEnv")
    }
}

impl Default for ExprEnv {
    fn default() -> Self {
        ExprEnv(Arc::new(Env::stdlib()))
    }
}

impl ExprEnv {
    /// Compiles an expression; the error is CEL's own message.
    pub fn compile(&self, text: &str) -> Result<Expr, String> {
        self.0
            .compile(text)
            .map(|program| Expr { program })
            .map_err(|e| format!("invalid expression: {e}"))
    }

    /// A scope with `record` bound to the raw record.
    pub fn bind(&self, record: &Value) -> Scope {
        let mut context = Context::with_env(Arc::clone(&self.0));
        context.add_variable_from_value("record", to_cel(record));
        Scope { context }
    }
}

/// JSON as CEL sees it. Integers become `int` whenever they fit, not `uint` as a generic
/// serde conversion would give them, so `record.qty * 2` works on a JSON `21`.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (None, None, Some(f)) => cel::Value::Float(f),
            // serde_json numbers are always one of the three without arbitrary precision.
            (None, None, None) => cel::Value::Null,
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let entries: HashMap<cel::objects::Key, cel::Value> = map
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.clone()), to_cel(v)))
                .collect();
            cel::Value::Map(entries.into())
        }
    }
}

/// Variables bound for evaluation.
pub struct Scope {
    context: Context<'static, 'static>,
}

impl Scope {
    /// Evaluates in this scope, with `line` bound when given.
    pub fn eval(&self, expr: &Expr, line: Option<&Value>) -> Result<Value, String> {
        let result = match line {
            None => expr.program.execute(&self.context),
            Some(line) => {
                let mut inner = self.context.new_inner_scope();
                inner.add_variable_from_value("line", to_cel(line));
                expr.program.execute(&inner)
            }
        };
        let value = match result {
            Ok(value) => value,
            // A key missing from the record is absent, as it is for a path.
            Err(cel::ExecutionError::NoSuchKey(_)) => return Ok(Value::Null),
            Err(e) => return Err(format!("expression failed: {e}")),
        };
        value
            .json()
            .map_err(|e| format!("expression result has no JSON form: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn evaluates_against_the_record_and_line() {
        let env = ExprEnv::default();
        let full = env
            .compile("record.E1KNA1M.NAME1 + ' ' + record.E1KNA1M.NAME2")
            .unwrap();
        let scope = env.bind(&json!({"E1KNA1M": {"NAME1": "Müller", "NAME2": "GmbH"}}));
        assert_eq!(scope.eval(&full, None).unwrap(), json!("Müller GmbH"));
        let qty = env.compile("line.qty * 2").unwrap();
        assert_eq!(
            scope.eval(&qty, Some(&json!({"qty": 21}))).unwrap(),
            json!(42)
        );
        let mapped = env.compile("[1, 2, 3].map(x, x * 2)").unwrap();
        assert_eq!(scope.eval(&mapped, None).unwrap(), json!([2, 4, 6]));
    }

    #[test]
    fn compile_and_runtime_errors_are_reported() {
        let env = ExprEnv::default();
        let e = env.compile("record.A +").unwrap_err();
        assert!(
            e.starts_with("invalid expression: ERROR: <input>:1:"),
            "{e}"
        );
        let missing = env.compile("record.MISSING").unwrap();
        let scope = env.bind(&json!({"A": 1, "S": "x"}));
        assert_eq!(
            scope.eval(&missing, None).unwrap(),
            Value::Null,
            "a missing key is absent"
        );
        let wrong = env.compile("record.S * 2").unwrap();
        let e = scope.eval(&wrong, None).unwrap_err();
        assert!(e.starts_with("expression failed: "), "{e}");
    }

    #[test]
    fn compiled_expressions_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Expr>();
        assert_send_sync::<ExprEnv>();
    }
}
