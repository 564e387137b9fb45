"""The attack catalogue (vbs-internals §6): scenarios run on real machines, judged by their goal."""
