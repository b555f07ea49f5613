from tensorprobe.cli import main

main()
