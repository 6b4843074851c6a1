"""The Crazyflie side of deployment, ROS-free: the CRTP protocol, a simulated Crazyflie that speaks it
on cflib's udp:// link, and the ground station's link and safety logic used by crazyflie_bridge."""
