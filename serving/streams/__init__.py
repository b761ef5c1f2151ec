"""Frames in: camera stream readers (RTSP, HTTP, files, folders) and safe image/video decoding."""
