/* Harness for test/test_firmware.py::test_matches_compiled_firmware_pid_c: the firmware's own pid.c
 * (copied in by the test from a firmware checkout) driven as attitude_pid_controller.c and
 * controller_pid.c do in rate mode (saturateSignedInt16, the -gyro.y pitch input, yaw through the yaw
 * attitude PID, control->yaw = -yaw), then powerDistributionLegacy and powerDistributionCap,
 * transcribed. stdin: "i <yaw0>" reinitialises; "t T roll pitch yawrate gx gy gz yaw" is one tick
 * (firmware units: PWM, deg/s, deg; pitch is the firmware's pitch-rate setpoint). stdout: T: m1 m2 m3 m4. */
#include <stdio.h>
#include <stdint.h>
#include "pid.h"
static int16_t sat(float in){ if (in > INT16_MAX) return INT16_MAX; else if (in < -INT16_MAX) return -INT16_MAX; else return (int16_t)in; }
static PidObject pr, pp, py, pyaw;
static float yawDes;
static void init(void){
  pidInit(&pr,0,250,500,2.5,0,0.002f,500,30,false); pidSetIntegralLimit(&pr,33.3);
  pidInit(&pp,0,250,500,2.5,0,0.002f,500,30,false); pidSetIntegralLimit(&pp,33.3);
  pidInit(&py,0,120,16.7,0,0,0.002f,500,30,false); pidSetIntegralLimit(&py,166.7);
  pidInit(&pyaw,0,6,1,0.35,0,0.002f,500,30,false); pidSetIntegralLimit(&pyaw,360);
  yawDes = 0;
}
static void tick(float T, float rr, float pr_, float yr, float gx, float gy, float gz, float yaw){
  yawDes += yr*0.002f; while (yawDes > 180.0f) yawDes -= 360.0f; while (yawDes < -180.0f) yawDes += 360.0f;
  pidSetDesired(&pyaw, yawDes); float yrd = pidUpdate(&pyaw, yaw, true);
  pidSetDesired(&pr, rr); int16_t ro = sat(pidUpdate(&pr, gx, false));
  pidSetDesired(&pp, pr_); int16_t po = sat(pidUpdate(&pp, -gy, false));
  pidSetDesired(&py, yrd); int16_t yo = sat(pidUpdate(&py, gz, false));
  int16_t cy = -yo;
  int16_t r = ro/2.0f, p = po/2.0f;
  int32_t m[4] = { T - r + p + cy, T - r - p - cy, T + r - p + cy, T + r + p - cy };
  int32_t hi = 0; for (int i=0;i<4;i++) if (m[i]>hi) hi=m[i];
  int32_t red = hi > 65535 ? hi - 65535 : 0;
  printf("%g:", T);
  for (int i=0;i<4;i++){ float t = m[i]-red; uint16_t o = t < 0 ? 0 : t; printf(" %u", o);} printf("\n");
}
int main(void){
  char cmd[16]; float a[8];
  while (scanf("%15s", cmd) == 1) {
    if (cmd[0]=='i') { float y0; scanf("%f", &y0); init(); yawDes = y0; pidReset(&pyaw, y0); continue; }
    for (int k=0;k<8;k++) scanf("%f", &a[k]);
    tick(a[0],a[1],a[2],a[3],a[4],a[5],a[6],a[7]);
  }
  return 0;
}
