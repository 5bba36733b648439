//! Vector collections in the engine: the collection itself is kiln-collection's; here is its
//! KServe v2 face (`serve`), which makes it a model every transport and pipeline step can call.

pub mod serve;
