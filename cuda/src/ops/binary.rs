//! Binary ops with broadcasting: kernels/binary.cu.

use mote::backend::{split, View};
use mote::ops::binary::{BinaryOp, Side};
use mote::Result;

use super::{broadcast_strides, dims, Walk, SPLIT_LOOP, THREADS};
use crate::pending::Write;
use crate::Cuda;

fn code(op: BinaryOp) -> i32 {
    i32::from(op.code())
}

impl Cuda {
    pub(crate) fn binary_fwd(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()> {
        split(&mut self.shadow, y.range(), [a.range(), b.range()])?;
        self.settle(&[a.range(), b.range()], y.range(), Write::Overwrite)?;
        let c = code(op);
        let (ap, bp, yp) = (self.at(a.offset), self.at(b.offset), self.at(y.offset));
        if a.len() == y.len() && b.len() == y.len() {
            let vec = Cuda::vec4(&[a.offset, b.offset, y.offset]);
            let n = y.len() as u64;
            let work = if vec == 1 { n / 4 + 3 } else { n };
            return self.launch(
                "binary_same",
                self.blocks(work, THREADS),
                THREADS,
                &[&c, &ap, &bp, &yp, &n, &vec],
            );
        }
        let w = Walk::new(
            &dims(&y.shape),
            &[
                broadcast_strides(&a.shape, &y.shape),
                broadcast_strides(&b.shape, &y.shape),
                y.shape.strides(),
            ],
            None,
        );
        self.launch(
            "binary_walk",
            self.blocks(w.ptotal, THREADS),
            THREADS,
            &[&c, &w, &ap, &bp, &yp],
        )
    }

    pub(crate) fn binary_bwd(
        &mut self,
        op: BinaryOp,
        side: Side,
        a: View,
        b: View,
        dy: View,
        dx: usize,
    ) -> Result<()> {
        let own = match side {
            Side::Lhs => a,
            Side::Rhs => b,
        };
        let dst = dx..dx.saturating_add(own.len());
        split(
            &mut self.shadow,
            dst.clone(),
            [a.range(), b.range(), dy.range()],
        )?;
        // Every element of the operand's gradient is written (summed over its broadcast dims).
        let reads = [a.range(), b.range(), dy.range()];
        let acc = i32::from(!self.settle(&reads, dst, Write::Accumulate)?);
        let (c, s) = (code(op), i32::from(side == Side::Rhs));
        let p = [
            self.at(a.offset),
            self.at(b.offset),
            self.at(dy.offset),
            self.at(dx),
        ];
        let n = dy.len() as u64;
        if a.len() == dy.len() && b.len() == dy.len() {
            return self.launch(
                "binary_bwd_same",
                self.blocks(n, THREADS),
                THREADS,
                &[&c, &s, &p[0], &p[1], &p[2], &p[3], &n, &acc],
            );
        }
        let sa = broadcast_strides(&a.shape, &dy.shape);
        let sb = broadcast_strides(&b.shape, &dy.shape);
        let so = if side == Side::Lhs { sa } else { sb };
        let w = Walk::new(&dims(&dy.shape), &[sa, sb, dy.shape.strides(), so], Some(3));
        if w.ltotal >= SPLIT_LOOP {
            return self.launch_2d(
                "binary_bwd_walk_split",
                w.ptotal.div_ceil(32) as u32,
                (32, 32),
                &[&c, &s, &w, &p[0], &p[1], &p[2], &p[3], &acc],
            );
        }
        self.launch(
            "binary_bwd_walk",
            self.blocks(w.ptotal, THREADS),
            THREADS,
            &[&c, &s, &w, &p[0], &p[1], &p[2], &p[3], &acc],
        )
    }
}
