/* Stub for the firmware harness: the D filter is off for cf2 (ATTITUDE_RATE_LPF_ENABLE false). */
#pragma once
typedef struct { float x; } lpf2pData;
static inline void lpf2pInit(lpf2pData* d, float a, float b) {}
static inline float lpf2pApply(lpf2pData* d, float v) { return v; }
