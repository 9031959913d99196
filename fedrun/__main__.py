from fedrun.cli import main

main()
