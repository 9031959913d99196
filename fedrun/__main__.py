from fedrun.cli_help import main

main()
