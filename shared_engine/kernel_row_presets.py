"""Row counts past which each weight-only kernel loses to the float matmul it replaces: presets, measured
on the machines named beside them, that a model ``build_decoder`` makes replaces with its own
measurements on the CPU it runs on (``shared_engine/kernel_rows.py``)."""

# Row counts past which the int8 kernel loses to dequantize-then-matmul (quantization.py's docstring), and
# past which each kernel loses to a bf16 F.linear on an LM head's shape (576 -> 49152).
INT8_KERNEL_MAX_ROWS = 8
INT8_BEATS_BF16_MAX_ROWS = 4
INT4_BEATS_BF16_MAX_ROWS = 8
# The same against bf16 weights packed for oneDNN (shared_engine/packed_linear.py), on the projections of
# SmolLM2-135M: int4 at 1 row takes ~0.45x the packed matmul's time, ~0.9x at 2, more from 4 rows on.
INT8_BEATS_PACKED_MAX_ROWS = 1
INT4_BEATS_PACKED_MAX_ROWS = 2
# Against float32 F.linear, the kernels fed bf16 rows (quantization.py's docstring), with
# ATEN_CPU_CAPABILITY=avx2.
INT8_BEATS_FP32_MAX_ROWS = 32
INT4_BEATS_FP32_MAX_ROWS = 64
# The engine's int4 kernel (int_matmul.int4_linear), on the same 121 projections: 1.9 ms at one row
# (AVX-512 VNNI; ATen's kernel 3.5 ms, packed bf16 4.7 ms), 3.4 ms at 4 rows (packed 5.0), 5.9 at 8
# (packed 4.8, plain bf16 9.6), 21 ms at 32 (float32 F.linear 37); as AVX2: 1.7 / 3.9 / 7.1 / 25 ms
# against float32 6.0 / 14 / 20 / 44 ms.
# These limits are presets: a model that build_decoder makes measures its own on the CPU it runs on,
# from these up (shared_engine/kernel_rows.py; on a CPU whose L3 cannot hold the float weights the kernel
# wins at many more rows).
ENGINE_INT4_BEATS_PACKED_MAX_ROWS = 4
ENGINE_INT4_BEATS_BF16_MAX_ROWS = 8
# Its int8 kernel on the LM head's shape (576 -> 49152): 0.5 ms at 1-2 rows, 0.6 at 4, 1.3 at 8 against
# 1.2 ms packed bf16 (ATen's int8 kernel: 1.0 / 1.7 / 3.2 ms); as AVX2 8 ms at 32 rows against 17 ms
# float32 (ATen's: 19 ms).
ENGINE_INT8_BEATS_PACKED_MAX_ROWS = 4
