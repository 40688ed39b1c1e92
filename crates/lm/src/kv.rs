//! The KV cache: keys and values of earlier positions, as burn tensors for the burn path or
//! on the host for decode steps (`crate::decode`), one representation at a time ([`Store`]).

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::batch::TokenBatch;

/// Keys and values of earlier positions with their key validity and next position ids.
///
/// The keys and values live in one place at a time ([`Store`]): burn tensors for the burn
/// path, or host buffers while decode steps on the CPU device append in place
/// (`crate::decode`); a forward of the burn path moves them back.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Key validity (false for padding) over all cached positions, row-major `[batch, t]`.
    pub key_mask: Vec<Vec<bool>>,
    /// Real tokens seen so far per row (next position id).
    pub next_pos: Vec<usize>,
    /// Positions per row the caller expects the cache to reach (0: unknown): the host cache
    /// is given exactly that room instead of doubling.
    pub(crate) planned: usize,
    pub(crate) store: Store,
}

/// Where a cache's keys and values are.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// Per layer, `[batch, kv_heads, t, head_dim]` (`None` until the layer runs).
    Tensors(Vec<Option<(Tensor<4>, Tensor<4>)>>),
    /// Held by decode steps on the host.
    Host(HostKv),
}

impl Default for Store {
    fn default() -> Self {
        Store::Tensors(Vec::new())
    }
}

impl KvCache {
    /// An empty cache that will hold `positions` positions per row (prompt and generated
    /// tokens), so decode steps allocate its room once.
    pub fn with_room(positions: usize) -> Self {
        Self {
            planned: positions,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.key_mask.first().map(|m| m.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the given rows, in that order (repeats allowed): one cached context per
    /// continuation that follows it.
    pub fn select_rows(&mut self, rows: &[usize]) {
        match &mut self.store {
            Store::Host(host) => host.select_rows(rows),
            Store::Tensors(layers) => {
                if let Some(dev) = layers.iter().flatten().map(|(k, _)| k.device()).next() {
                    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &dev);
                    for layer in layers.iter_mut() {
                        if let Some((k, v)) = layer.take() {
                            *layer = Some((k.select(0, idx.clone()), v.select(0, idx.clone())));
                        }
                    }
                }
            }
        }
        self.key_mask = rows.iter().map(|&r| self.key_mask[r].clone()).collect();
        self.next_pos = rows.iter().map(|&r| self.next_pos[r]).collect();
    }

    /// The keys and values as burn tensors on `device`, one slot per layer (moved back from
    /// the host when decode steps held them).
    pub(crate) fn tensors(
        &mut self,
        device: &Device,
        n_layers: usize,
    ) -> &mut [Option<(Tensor<4>, Tensor<4>)>] {
        if let Store::Host(host) = &self.store {
            self.store = Store::Tensors(host.to_tensors(device));
        }
        let Store::Tensors(layers) = &mut self.store else {
            unreachable!("moved to tensors above");
        };
        if layers.is_empty() {
            *layers = vec![None; n_layers];
        }
        layers
    }

    /// Moves the keys and values to the host for decode steps (`make` moves the tensors in;
    /// it returns `None` only with the cache as it was). True when they are on the host.
    pub(crate) fn move_to_host(&mut self, make: impl FnOnce(&mut Self) -> Option<HostKv>) -> bool {
        if matches!(self.store, Store::Tensors(_)) {
            match make(self) {
                Some(host) => self.store = Store::Host(host),
                None => return false,
            }
        }
        true
    }

    /// Records a batch's key validity and returns its position ids (padding gets 0).
    pub(crate) fn advance(&mut self, batch: &TokenBatch) -> Vec<usize> {
        let (b, t) = (batch.batch, batch.seq);
        if self.key_mask.is_empty() {
            self.key_mask = vec![Vec::new(); b];
            self.next_pos = vec![0; b];
        }
        let mut positions = Vec::with_capacity(b * t);
        for row in 0..b {
            let mut n = self.next_pos[row];
            for col in 0..t {
                let real = batch.mask[row * t + col];
                positions.push(if real { n } else { 0 });
                if real {
                    n += 1;
                }
                self.key_mask[row].push(real);
            }
            self.next_pos[row] = n;
        }
        positions
    }
}

/// Keys and values held on the host, `[rows, kv_heads, capacity, head_dim]` per layer, with
/// room for `capacity - len` more positions: a step writes its key and value in place.
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    rows: usize,
    kv_heads: usize,
    head_dim: usize,
    pub(crate) capacity: usize,
    pub(crate) len: usize,
    pub(crate) layers: Vec<(Vec<f32>, Vec<f32>)>,
}

/// Positions of room added when the cache moves to the host or fills up (at least doubling).
const GROWTH: usize = 64;

impl HostKv {
    pub(crate) fn empty(rows: usize, kv_heads: usize, head_dim: usize, n_layers: usize) -> Self {
        Self {
            rows,
            kv_heads,
            head_dim,
            capacity: 0,
            len: 0,
            layers: vec![(Vec::new(), Vec::new()); n_layers],
        }
    }

    /// Room for `extra` more positions, moving each row's keys to the wider stride: the
    /// `planned` positions when they cover it, else at least double.
    pub(crate) fn reserve(&mut self, extra: usize, planned: usize) {
        if self.len + extra <= self.capacity {
            return;
        }
        let cap = if planned >= self.len + extra {
            planned
        } else {
            (self.len + extra)
                .max(2 * self.capacity)
                .max(self.len + GROWTH)
        };
        let (old, d, len) = (self.capacity, self.head_dim, self.len);
        let heads = self.rows * self.kv_heads;
        for (k, v) in &mut self.layers {
            for buf in [k, v] {
                let mut wide = vec![0f32; heads * cap * d];
                for hd in 0..heads {
                    wide[hd * cap * d..][..len * d]
                        .copy_from_slice(&buf[hd * old * d..][..len * d]);
                }
                *buf = wide;
            }
        }
        self.capacity = cap;
    }

    /// The burn cache's tensors (`[rows, kv_heads, t, head_dim]` per layer), moved in with
    /// room for the cache's planned positions; each layer's tensors are dropped once copied.
    /// `None`, the cache untouched, when a layer is missing or shaped otherwise.
    pub(crate) fn from_tensors(
        cache: &mut KvCache,
        kv_heads: usize,
        head_dim: usize,
    ) -> Option<Self> {
        let (rows, len) = (cache.key_mask.len(), cache.len());
        let Store::Tensors(layers) = &mut cache.store else {
            return None;
        };
        let dims = [rows, kv_heads, len, head_dim];
        let shaped = |l: &Option<(Tensor<4>, Tensor<4>)>| {
            l.as_ref()
                .is_some_and(|(k, v)| k.dims() == dims && v.dims() == dims)
        };
        if len == 0 || !layers.iter().all(shaped) {
            return None;
        }
        let mut host = Self::empty(rows, kv_heads, head_dim, layers.len());
        host.capacity = cache.planned.max(len);
        host.len = len;
        let (cap, heads) = (host.capacity, rows * kv_heads);
        for (slot, layer) in host.layers.iter_mut().zip(layers.iter_mut()) {
            let (k, v) = layer.take().expect("checked above");
            let wide = |t: Tensor<4>| {
                let dense = t.into_data().try_into_vec::<f32>();
                let dense = dense.expect("f32 keys and values on the CPU device");
                let mut buf = vec![0f32; heads * cap * head_dim];
                for (h, src) in dense.chunks_exact(len * head_dim).enumerate() {
                    buf[h * cap * head_dim..][..len * head_dim].copy_from_slice(src);
                }
                buf
            };
            *slot = (wide(k), wide(v));
        }
        Some(host)
    }

    /// Back to burn tensors, for a forward the host path does not take.
    pub(crate) fn to_tensors(&self, device: &Device) -> Vec<Option<(Tensor<4>, Tensor<4>)>> {
        let (heads, d, len, cap) = (
            self.rows * self.kv_heads,
            self.head_dim,
            self.len,
            self.capacity,
        );
        let dims = [self.rows, self.kv_heads, len, d];
        let pack = |buf: &[f32]| {
            let mut out = Vec::with_capacity(heads * len * d);
            for h in 0..heads {
                out.extend_from_slice(&buf[h * cap * d..][..len * d]);
            }
            Tensor::<4>::from_data(TensorData::new(out, dims), device)
        };
        self.layers
            .iter()
            .map(|(k, v)| Some((pack(k), pack(v))))
            .collect()
    }

    /// Keeps the given rows (in that order, repeats allowed).
    pub(crate) fn select_rows(&mut self, rows: &[usize]) {
        let per_row = self.kv_heads * self.capacity * self.head_dim;
        for (k, v) in &mut self.layers {
            for buf in [k, v] {
                let mut out = Vec::with_capacity(rows.len() * per_row);
                for &r in rows {
                    out.extend_from_slice(&buf[r * per_row..][..per_row]);
                }
                *buf = out;
            }
        }
        self.rows = rows.len();
    }
}
