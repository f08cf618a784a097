//! Every op family: its op enum, documentation (formula, derivative, value at kinks), the
//! reference forward and backward kernels, the tape methods, and tests.

pub mod binary;
pub mod conv;
pub mod gather;
pub mod loss;
pub mod matmul;
pub mod movement;
pub mod reduce;
pub mod softmax;
pub mod unary;
