/* Stub for the firmware harness: constrain() as in the firmware num.h. */
#pragma once
static inline float constrain(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }
